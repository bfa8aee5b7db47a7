"""Synthesis: the teacher LLM writes and judges examples.

- server.py      start/stop a local vLLM teacher (its own virtual environment on CPU machines)
- installer.py   `pip install` through uv with pip's own sources (the teacher's and the project's venvs)
- client.py      TeacherConfig and the async OpenAI-compatible client (retries, budget, cache)
- teachers.py    the one teacher handle: a run's teachers, `session(name)` a served, ready client
- cache.py       the SQLite response cache keyed by hash(model, messages, params, schema)
- budget.py      request/token budget and token upper bounds
- estimate.py    `pond run --estimate`: calls and a token bound per step, before sending any
- prompts/       the prompt templates as plain text files users can read and replace
- generators.py  the `synthesize` step: edge_cases, self_instruct, evolve, respond
- judge.py       the `judge` step (rubric score or pairwise) and `pairwise_judge`
"""
