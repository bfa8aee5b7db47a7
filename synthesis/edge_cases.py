"""Writing edge cases by kind (synthesis/edge_kinds.py), with the yield levers the options turn on.

Every slot (one new row) has a kind (the kinds take turns) and one real prompt of the pond it is
built on. A transformed kind (typos, long_input, prompt_injection) is that prompt changed by
synthesis/edge_transforms.py, with no call to the writer; its answer is written to the real prompt
(`answer_to`: the answer that prompt deserves is the one its case expects), or with `answer_from: seed`
it is the seed row's own answer to that prompt (`seed_answer`): the transformation leaves the request as
it was, so that answer is what the case expects, and no model writes it. A seed of a transformed
kind is a prompt of at most `max_prompt_chars` where there is one (a question a person types), and
no two transformed cases share a seed while unused ones are left.

A model-written kind shows the real prompt (`$seed`) and a few more as examples (`$examples`,
few-shot), and the writer rewrites it. Then:
- `per_call: 1` asks for one message per call (schema: one string of min_prompt_chars to
  max_prompt_chars); `per_call > 1` asks for a schema'd list of that many messages of one kind;
- `candidates: k` samples k replies per call (vLLM `n`: the prompt is read once) and keeps the first
  that passes the validity checks;
- `retries: r` asks again, up to r times, for a slot none of whose candidates passed, showing the
  writer its rejected message and why it was rejected.
Validity checks, in order: empty, too few words, the same as a pool prompt, ROUGE-L near a pool
prompt (`max_similarity`), and a semantic near-copy of a seed row (`copies_seed`: embedding
cosine above `max_cosine`, the semantic-dup threshold). Accepted prompts join the pool, so the
new ones are also checked against each other.
"""
from __future__ import annotations

import numpy as np

from curation import answer_faults
from synthesis.client import ChatRequest, Completion
from synthesis.edge_kinds import DEFAULT_KINDS, kind_name, kind_template, transformed
from synthesis.edge_transforms import TRANSFORMS, applies
from synthesis.prompts import render
from synthesis.near_copies import SeedCopies
from synthesis.rows import Draft, clip
from synthesis.similarity import NoveltyIndex, novelty_error

KEY = "message"


def _one_schema(min_chars: int, max_chars: int) -> dict:
    return {"type": "object", "additionalProperties": False, "required": [KEY],
            "properties": {KEY: {"type": "string", "minLength": min_chars, "maxLength": max_chars}}}


def _list_schema(count: int, min_chars: int, max_chars: int) -> dict:
    item = {"type": "string", "minLength": min_chars, "maxLength": max_chars}
    return {"type": "object", "additionalProperties": False, "required": ["messages"],
            "properties": {"messages": {"type": "array", "minItems": count, "maxItems": count, "items": item}}}


def _reply_tokens(count: int, max_chars: int) -> int:
    return count * (max_chars // 2 + 8) + 24  # ~2+ chars a token, with slack, plus the JSON around


def _first_valid(texts: list[str], index: NoveltyIndex, copies: SeedCopies, opts
                 ) -> tuple[str | None, str | None, str]:
    """(the first candidate passing every check, else None; the last rejected one; its reason)."""
    last, last_text = "the writer returned no candidate", None
    cleaned = [" ".join(t.split()) if opts.per_call == 1 else t.strip() for t in texts]
    pending = []
    for t in cleaned:
        err = novelty_error(index, t, opts.min_prompt_words, opts.max_similarity)
        if err is None:
            pending.append(t)
        else:
            last, last_text = err, t
    for t, err in zip(pending, copies.errors(pending)):
        if err is None:
            return t, last_text, last
        last, last_text = err, t
    return None, last_text, last


def _parse(result: Completion | BaseException, key: str) -> tuple[list[list[str]], str | None]:
    """Per choice: the messages it holds (one, or a list); and the error if no choice could be read."""
    if isinstance(result, BaseException):
        return [], f"teacher call failed: {result}"
    out, error = [], None
    for i in range(len(result.texts)):
        try:
            value = result.json(i)[key]
            out.append([str(x) for x in value] if isinstance(value, list) else [str(value)])
        except KeyError:
            error = f"unusable teacher reply: no {key!r} in {result.texts[i][:120]!r}"
        except (ValueError, TypeError) as e:
            error = f"unusable teacher reply: {e}"
    return out, (error if not out else None)


def _retry_messages(ask: list[dict], rejected: str | None, error: str) -> list[dict]:
    if rejected is None:  # nothing usable came back: ask again
        return ask
    return ask + [{"role": "assistant", "content": rejected},
                  {"role": "user", "content": f"That message was rejected ({error}). Write a different one "
                                              "that follows the instructions."}]


def kind_plan(opts, n_slots: int) -> list:
    specs = opts.kinds or list(DEFAULT_KINDS)
    return [specs[k % len(specs)] for k in range(n_slots)]


def answer_fault(prompt: str, answer: str) -> str | None:
    """Why an answer is not worth a row (curation/answer_faults.py's detectors), or None."""
    if answer_faults.empty(answer):
        return "empty answer from the teacher"
    if (why := answer_faults.truncated(answer)) is not None:
        return f"answer stops partway: {why}"
    if answer_faults.repeats_prompt(prompt, answer):
        return "answer repeats the prompt"
    if answer_faults.degenerate_repetition(answer):
        return "answer loops: degenerate repetition"
    if (langs := answer_faults.language_mismatch(prompt, answer)) is not None:
        return f"answer in another language: {langs[0]} prompt, {langs[1]} answer"
    return None


def _transformed_draft(slot: int, spec: str, seed_i: int, ids: list[str], prompts: list[str],
                       answers: list[str], opts, ctx, first_answers: list[str] | None = None) -> Draft:
    """A case made from the real prompt `seed_i` by its kind's transformation (no writer call); the
    answer is written to the real prompt. long_input pastes other rows' answers as background."""
    rng = np.random.default_rng([ctx.seed, 12, slot])
    others = [i for i in range(len(answers)) if i != seed_i and answers[i].strip()]
    case = TRANSFORMS[spec](prompts[seed_i], [answers[i] for i in others], rng, opts)
    extra = {"edge_kind": spec, "calls": 0, "candidates": 0, "answer_to": [{"role": "user", "content": prompts[seed_i]}]}
    if first_answers is not None:
        extra["seed_answer"] = first_answers[seed_i]
    return Draft(slot, [{"role": "user", "content": case}], [ids[seed_i]], extra=extra)


def _transform_seed(spec: str, mine: list[int], prompts: list[str], used: set[int], rng: np.random.Generator,
                    max_chars: int, first_answers: list[str] | None = None) -> int:
    """A seed for a transformed case: a prompt the transformation changes (with seed answers: one the row
    answers), one a person types (short enough), not used yet, each where there is one."""
    if first_answers is not None:
        mine = [i for i in mine if first_answers[i].strip()] or mine
    mine = [i for i in mine if applies(spec, prompts[i])] or mine
    short = [i for i in mine if len(prompts[i]) <= max_chars] or mine
    fresh = [i for i in short if i not in used] or short
    return int(rng.choice(fresh))


def edge_case_drafts(ids: list[str], prompts: list[str], opts, ctx, session, seed_fn, embed,
                     seed_pools: list[list[int]] | None = None, answers: list[str] | None = None,
                     first_answers: list[str] | None = None) -> list[Draft]:
    """Drafts (prompt chosen, not yet answered) for `opts.n` edge cases; `extra` holds the kind, the
    calls it took and the candidates it saw (and `answer_to`, for a transformed kind). `seed_pools[slot]`:
    the rows that case's seed and examples are drawn from (target: gaps), default any row with a
    prompt. `answers`: the rows' answers, long_input's background (default: none, the prompts);
    `first_answers`: each row's answer to its first prompt, the answer of a transformed case (answer_from: seed)."""
    drafts, asks = _seeded_drafts(ids, prompts, opts, ctx, seed_pools, answers, first_answers)
    writing = _Writing(drafts, ids, prompts, opts, embed)
    _first_round(writing, asks, opts, ctx, session, seed_fn)
    _retry_rounds(writing, asks, opts, ctx, session, seed_fn)
    for slot, error in writing.errors.items():
        drafts[slot].error = error
    return drafts


def _seeded_drafts(ids: list[str], prompts: list[str], opts, ctx, seed_pools: list[list[int]] | None,
                   answers: list[str] | None, first_answers: list[str] | None
                   ) -> tuple[list[Draft], list[list[dict]]]:
    """Every slot's draft on its seed rows: a transformed kind's case already made, a written kind's prompt
    still empty; and per slot the messages of its request to the writer (none for a transformed kind)."""
    usable = [i for i, p in enumerate(prompts) if p.strip()]
    if not usable:
        raise ValueError("edge_cases needs seed rows with a prompt")
    answers = answers if answers is not None else prompts
    rng = np.random.default_rng([ctx.seed, 11])
    plan = kind_plan(opts, opts.n)
    templates = {kind_name(s): kind_template(s, ctx.resolve) for s in plan}
    drafts: list[Draft] = []
    asks: list[list[dict]] = []
    used: set[int] = set()
    for slot, spec in enumerate(plan):
        mine = [i for i in seed_pools[slot] if prompts[i].strip()] or usable if seed_pools else usable
        if transformed(spec):
            seed_i = _transform_seed(spec, mine, prompts, used, np.random.default_rng([ctx.seed, 13, slot]),
                                     opts.max_prompt_chars, first_answers)
            used.add(seed_i)
            drafts.append(_transformed_draft(slot, spec, seed_i, ids, prompts, answers, opts, ctx, first_answers))
            asks.append([])
            continue
        draft, ask = _written_draft(slot, spec, mine, usable, ids, prompts, opts, rng, templates[kind_name(spec)])
        drafts.append(draft)
        asks.append(ask)
    return drafts, asks


def _written_draft(slot: int, spec, mine: list[int], usable: list[int], ids: list[str], prompts: list[str], opts,
                   rng: np.random.Generator, template: tuple[str, str]) -> tuple[Draft, list[dict]]:
    """A model-written case's draft (its seed row and the example rows shown) and its request: the kind's
    template with the seed prompt (`$seed`) and the examples (`$examples`)."""
    seed_i = int(rng.choice(mine))
    others = [i for i in mine if i != seed_i] or [i for i in usable if i != seed_i] or usable
    shown = rng.choice(others, size=min(opts.seeds_per_call, len(others)), replace=False) if opts.seeds_per_call else []
    text, description = template
    text = render(text, examples="\n".join(f"- {clip(prompts[i], opts.max_example_chars)}" for i in shown)
                  or "(none)", seed=clip(prompts[seed_i], opts.max_example_chars), description=description)
    draft = Draft(slot, [], [ids[seed_i], *(ids[i] for i in shown)],
                  extra={"edge_kind": kind_name(spec), "calls": 0, "candidates": 0})
    return draft, [{"role": "user", "content": text}]


class _Writing:
    """The slots while the writer works: the novelty index and the seed copies every accepted prompt joins,
    and per unsettled slot its error and its last rejected message (shown back on a retry)."""

    def __init__(self, drafts: list[Draft], ids: list[str], prompts: list[str], opts, embed):
        self.drafts, self.opts = drafts, opts
        self.index = NoveltyIndex()
        for row_id, p in zip(ids, prompts):
            self.index.add(p, row_id)
        for d in drafts:
            if d.context:  # a transformed case is its seed by design: it is not checked, only kept from the writer's
                self.index.add(d.prompt, f"new slot {d.slot}")
        self.copies = SeedCopies(ids, prompts, opts.max_cosine, embed)
        self.errors: dict[int, str] = {}
        self.replies: dict[int, str] = {}  # slot -> a rejected message, shown back on a retry

    def settle(self, slot: int, texts: list[str], error: str | None) -> None:
        """Count a call's candidates for `slot`; accept the first valid one, or record why none was."""
        d = self.drafts[slot]
        d.extra["calls"] += 1
        d.extra["candidates"] += len(texts)
        if not texts:
            self.errors[slot] = error or "the writer returned no candidate"
            return
        chosen, rejected, last = _first_valid(texts, self.index, self.copies, self.opts)
        if chosen is None:
            self.errors[slot], self.replies[slot] = last, rejected
            return
        self.errors.pop(slot, None)
        d.context = [{"role": "user", "content": chosen}]
        self.index.add(chosen, f"new slot {slot}")
        self.copies.add(chosen, f"new slot {slot}")


def _first_round(writing: _Writing, asks: list[list[dict]], opts, ctx, session, seed_fn) -> None:
    """One call per written slot, or schema'd lists of `per_call` slots of one kind."""
    written = [s for s, ask in enumerate(asks) if ask]
    if opts.per_call == 1:
        calls = [ChatRequest(asks[s], max_tokens=_reply_tokens(1, opts.max_prompt_chars), temperature=opts.temperature,
                             n=opts.candidates, seed=seed_fn(ctx.seed, "edge_cases", s),
                             schema=_one_schema(opts.min_prompt_chars, opts.max_prompt_chars), schema_name=KEY)
                 for s in written]
        groups = [[s] for s in written]
    else:
        calls, groups = _list_calls(writing.drafts, asks, written, opts, ctx, seed_fn)
    results = session.run(calls, ctx.track, "edge_cases: writing prompts")
    for g, result in zip(groups, results):
        choices, error = _parse(result, KEY if opts.per_call == 1 else "messages")
        for k, slot in enumerate(g):
            # slot k of the call takes item k of every choice: its candidates
            writing.settle(slot, [c[k] for c in choices if k < len(c)], error)


def _list_calls(drafts: list[Draft], asks: list[list[dict]], written: list[int], opts, ctx, seed_fn
                ) -> tuple[list[ChatRequest], list[list[int]]]:
    """Requests for `per_call` messages of one kind each, and the slots each one fills."""
    by_kind: dict[str, list[int]] = {}
    for s in written:
        by_kind.setdefault(drafts[s].extra["edge_kind"], []).append(s)
    groups = [slots[i:i + opts.per_call] for slots in by_kind.values() for i in range(0, len(slots), opts.per_call)]
    calls = []
    for g in groups:
        ask = [{"role": "user", "content": asks[g[0]][0]["content"] + f"\nWrite {len(g)} different such messages."}]
        calls.append(ChatRequest(ask, max_tokens=_reply_tokens(len(g), opts.max_prompt_chars),
                                 temperature=opts.temperature, n=opts.candidates,
                                 seed=seed_fn(ctx.seed, "edge_cases", "list", g[0]),
                                 schema=_list_schema(len(g), opts.min_prompt_chars, opts.max_prompt_chars),
                                 schema_name="messages"))
    return calls, groups


def _retry_rounds(writing: _Writing, asks: list[list[dict]], opts, ctx, session, seed_fn) -> None:
    """Up to `retries` more calls for each slot still without a prompt, showing the writer what it wrote and
    why it was rejected."""
    for attempt in range(1, opts.retries + 1):
        todo = sorted(writing.errors)
        if not todo:
            break
        calls = [ChatRequest(_retry_messages(asks[s], writing.replies.get(s), writing.errors[s]),
                             max_tokens=_reply_tokens(1, opts.max_prompt_chars), temperature=opts.temperature,
                             n=opts.candidates, seed=seed_fn(ctx.seed, "edge_cases", "retry", attempt, s),
                             schema=_one_schema(opts.min_prompt_chars, opts.max_prompt_chars), schema_name=KEY)
                 for s in todo]
        for s, result in zip(todo, session.run(calls, ctx.track, f"edge_cases: retry {attempt}")):
            choices, error = _parse(result, KEY)
            writing.replies.pop(s, None)
            writing.settle(s, [c[0] for c in choices if c], error)
