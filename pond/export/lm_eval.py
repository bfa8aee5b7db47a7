"""`--to lm-eval`: the held-out set as lm-evaluation-harness tasks others can rerun on any model.

Follows lm-eval's task guide (docs/task_guide.md, docs/new_task_guide.md, v0.4): a local JSONL read
through the `json` dataset builder (`dataset_path: json`, `dataset_kwargs.data_files`), and two
task YAMLs over it, run with `lm_eval --include_path DIR --tasks NAME` (add `--apply_chat_template`
for chat models):

- `NAME`: `generate_until`, greedy, the answer scored against the reference with `bleu` and `chrf`;
- `NAME_loglik`: `loglikelihood` of the reference answer after the prompt, `perplexity`
  (lm-eval's: exp of minus the mean per-answer log-likelihood, not per token).

Each JSONL line: `id`, `messages` (the whole conversation, so pond can read it back), `prompt`
(the turns before the last answer: the user's text for one turn, `role: content` blocks for more)
and `reference` (the last assistant turn). Rows without an assistant turn are listed in problems.
`data_files` is an absolute path: lm-eval resolves it from where it runs, not from the YAML.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import yaml

from curation.records import render_text
from pond.export.chat import BASE, has_assistant, write_checked
from pond.export.lineage import comment_block

MAX_GEN_TOKS = 512


def task_doc(row_id: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    before = [{"role": m["role"], "content": m["content"]} for m in messages[:last]]
    users = [m for m in before if m["role"] != "system"]
    prompt = users[0]["content"] if len(users) == 1 and len(before) == 1 else render_text(before)
    return {"id": row_id, "messages": before + [{"role": "assistant", "content": messages[last]["content"]}],
            "prompt": prompt, "reference": messages[last]["content"]}


def task_configs(name: str, data: Path) -> dict[str, dict[str, Any]]:
    common = {
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(Path(data).resolve())}},
        "test_split": "test",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{reference}}",
        "metadata": {"version": 1.0},
    }
    return {
        name: {"task": name, **common, "output_type": "generate_until",
               "generation_kwargs": {"until": [], "do_sample": False, "temperature": 0.0,
                                     "max_gen_toks": MAX_GEN_TOKS},
               "metric_list": [{"metric": "bleu", "aggregation": "bleu", "higher_is_better": True},
                               {"metric": "chrf", "aggregation": "chrf", "higher_is_better": True}]},
        f"{name}_loglik": {"task": f"{name}_loglik", **common, "output_type": "loglikelihood",
                           "metric_list": [{"metric": "perplexity", "aggregation": "perplexity",
                                            "higher_is_better": False}]},
    }


def write_lm_eval(df: pl.DataFrame, out: Path, name: str, info: dict[str, Any]) -> tuple[list[Path], int, int]:
    data, problems = out / f"{name}.jsonl", out / "problems.jsonl"
    written, listed = write_checked(df.select("id", "messages").iter_rows(), (*BASE, has_assistant), task_doc,
                                    data, problems)
    files = [data]
    info = info | {"n_rows": written + listed, "written": written, "problems": listed}
    for task, config in task_configs(name, data).items():
        path = out / f"{task}.yaml"
        path.write_text(comment_block(info) + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        files.append(path)
    return files, written, listed
