"""The `synthesize` step: the teacher writes new rows from seed rows.

Generators:
- edge_cases     edge cases by kind (synthesis/edge_kinds.py: ambiguous, missing information,
                 prompt injection, ... or the recipe's own), each built on a real prompt of the pond
                 with a few more as examples, then answered (synthesis/edge_cases.py: one case per
                 call or a schema'd list, best-of-`candidates`, retries with the rejection shown);
                 new rows that are semantic near-copies of a seed row (`copies_seed`) or of each
                 other are rejected, and the batch gets a synthetic-vs-real report in the stats.
                 With `prompt:` the older single-template form runs (one template, no kinds);
- self_instruct  new instructions from sampled seeds, dropping those too similar (ROUGE-L) to the
                 pool, then answer each;
- evolve         Evol-Instruct: rewrite a seed instruction (deepen, add a constraint, concretise,
                 require reasoning), then answer it;
- respond        the teacher answers existing prompts (to replace bad answers).

Every new row has `source: synthetic:<generator>` and the ids of the rows it came from in
`seed_ids`. kept = the input rows + the new rows that made it; a new row that failed (teacher
error, unparsable or cut-off reply, budget, duplicate of the pool) is a rejection with the reason.
So len(kept) + len(rejected) == len(df) + attempted rows (respond with `replace`: the replaced
originals are rejections too, and count as input rows).
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field, field_validator, model_validator

from curation.step import StepContext, StepOptions, reject
from synthesis.budget import call_tokens_upper, prompt_tokens_upper
from synthesis.cache import ResponseCache, run_cache_path
from curation.embed import EmbeddingOptions
from curation.records import render_text
from curation.settings import warn_once
from synthesis.client import ChatRequest, Completion, TeacherSession
from synthesis.edge_kinds import EdgeKind, check_kinds, transformed, translation_error
from synthesis.edge_cases import answer_fault, edge_case_drafts
from synthesis.near_copies import reject_copies
from synthesis.prompts import load_text, render
from synthesis.realism import synthetic_vs_real
from synthesis.rows import (CANDIDATE_OF, EDGE_KIND, Draft, clip, concat_like, context_for_answer, first_answer,
                            row_answer, row_prompt, split_drafts, with_seed_ids)
from synthesis.similarity import NoveltyIndex, novelty_error
from synthesis.teachers import teachers_of

STAGE = "synthesize"
EVOLUTIONS = ("deepen", "constraints", "concretise", "reasoning")
BYTES_PER_CHAR = 4  # upper bound for text the teacher has not written yet (UTF-8)


class SynthesizeOptions(StepOptions):
    """Options of the `synthesize` step."""

    generator: Literal["edge_cases", "self_instruct", "evolve", "respond"] = Field(
        "edge_cases", description="edge_cases | self_instruct | evolve | respond (see synthesis/generators.py).")
    n: int = Field(100, ge=1, description="New rows to attempt; for respond, the most rows to re-answer "
                                          "(sampled with the recipe seed).")
    teacher: str = Field("default", description="Name of the teacher in the recipe's `teachers:`.")
    task: str | None = Field(None, description="What the assistant is for, in a sentence; default: the "
                                               "teacher infers it from the seed examples.")
    temperature: float = Field(0.9, ge=0, le=2, description="Sampling temperature for writing new prompts.")
    answer_temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature for answers.")
    max_tokens: int = Field(256, ge=1, description="Longest answer in tokens; a longer one is cut off and "
                                                   "the row rejected.")
    per_call: int = Field(3, ge=1, le=20, description="New prompts asked for per call (edge_cases, "
                                                      "self_instruct).")
    seeds_per_call: int = Field(3, ge=0, le=20, description="Seed examples shown per call.")
    max_prompt_chars: int = Field(300, ge=20, description="Longest new prompt in characters (a schema bound); "
                                                          "evolve only rewrites seeds up to this length.")
    min_prompt_words: int = Field(3, ge=0, description="Reject a new prompt with fewer words than this.")
    max_example_chars: int = Field(200, ge=20, description="Seed examples are clipped to this many characters.")
    max_similarity: float = Field(0.7, ge=0, le=1, description="self_instruct/edge_cases: reject a new prompt "
                                  "whose ROUGE-L F1 with a pool prompt (real or new) reaches this; 1.0 keeps "
                                  "all but exact duplicates.")
    system: str | None = Field(None, description="System message sent with every answer request.")
    prompt: str | None = Field(None, description="Replace the generator's prompt template: a built-in name, a "
                                                 "file path or inline text (see synthesis/prompts/).")
    replace: bool = Field(True, description="respond: the re-answered originals become rejections "
                                            "('replaced by ...') instead of staying beside the new rows.")
    kinds: list[str | EdgeKind] | None = Field(
        None, description="edge_cases: the kinds to write, taking turns over the n rows: built-in names "
                          "(ambiguous, missing_information, contradictory, out_of_scope, prompt_injection, "
                          "long_input, typos; other_language with writer_translates; see docs/edge-cases.md) "
                          "and/or your own as {name, description} or {name, prompt}; default: every built-in "
                          "kind but other_language.")
    typo_rate: float = Field(0.05, gt=0, le=0.5, description="edge_cases, kind typos: the share of the real "
                             "prompt's prose letters turned into a typo (a keyboard neighbour or dropped).")
    long_input_words: int = Field(150, ge=20, le=2000, description="edge_cases, kind long_input: words of other "
                                  "rows' answers pasted before the real prompt.")
    writer_translates: bool = Field(False, description="edge_cases: the writer really translates, so the kind "
                                    "other_language is offered (the CPU writers here do not; see docs/edge-cases.md).")
    candidates: int = Field(1, ge=1, le=16, description="edge_cases: replies sampled per prompt-writing call "
                                                       "(vLLM `n`, the prompt read once); the first that passes "
                                                       "the validity checks is kept.")
    retries: int = Field(0, ge=0, le=5, description="edge_cases: ask again, up to this many times, for a case "
                                                   "that failed the validity checks, showing the writer its "
                                                   "message and the reason.")
    answer_from: Literal["teacher", "seed"] = Field(
        "teacher", description="edge_cases, transformed kinds (typos, long_input, prompt_injection): who answers. "
                               "teacher: the teacher writes the answer to the real prompt the case is built on. "
                               "seed: that prompt's own answer in the seed row (the transformation leaves the "
                               "request as it was, so it is the answer the case expects; no teacher call), "
                               "checked for the same answer faults. Model-written kinds are always answered by "
                               "the teacher.")
    answer_candidates: int = Field(1, ge=1, le=16, description="Answers sampled per new prompt (vLLM `n`); the "
                                                              "first complete, non-empty one is kept.")
    target: Literal["all", "gaps"] = Field("all", description="edge_cases: all: seeds drawn from every input "
                                           "row; gaps: from raw-pool clusters the curated set under-represents "
                                           "(needs an embed_quality or semantic_dedup step earlier; never the "
                                           "held-out rows; see docs/edge-cases.md).")
    gap_clusters: int = Field(8, ge=2, le=256, description="target: gaps: k-means clusters of the raw pool.")
    judge_picks: bool = Field(False, description="edge_cases: every complete answer of `answer_candidates` "
                                                 "becomes a row, `candidate_of` naming its case, and a judge step "
                                                 "with `best_of: candidate_of` keeps the best-scored one of each "
                                                 "case (best-of-n with the judge picking; n x the judge calls).")
    min_prompt_chars: int = Field(20, ge=1, description="edge_cases: shortest new prompt in characters (a "
                                                        "schema bound: the writer cannot stop sooner).")
    max_cosine: float | None = Field(0.93, gt=0, le=1, description="edge_cases: a new prompt or row whose "
                                     "embedding cosine to a seed row exceeds this is rejected as copies_seed "
                                     "(to another new row: near_copy); 0.93 is semantic_dedup's threshold at its "
                                     "default eps 0.07. null: no embedding check.")
    embedding: EmbeddingOptions = Field(default_factory=EmbeddingOptions, description="edge_cases: the "
                                        "embedding model of the near-copy checks and the synthetic-vs-real report "
                                        "(the same settings as semantic_dedup's give the same vectors, cached).")

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, v):
        return None if v is None else check_kinds(v)

    @model_validator(mode="after")
    def _kinds_are_edge_cases(self):
        if self.kinds is not None and self.generator != "edge_cases":
            raise ValueError(f"kinds: only the edge_cases generator has kinds (generator is {self.generator})")
        if self.kinds is not None and self.prompt is not None:
            raise ValueError("kinds and prompt: each kind has its own prompt; give a kind {name, prompt} instead")
        if (error := translation_error(self.kinds, self.writer_translates)) is not None:
            raise ValueError(error)
        if self.min_prompt_chars > self.max_prompt_chars:
            raise ValueError(f"min_prompt_chars={self.min_prompt_chars} > max_prompt_chars={self.max_prompt_chars}")
        return self

    @property
    def by_kind(self) -> bool:
        """edge_cases by kind (the default), not the older single-template form (`prompt:` given)."""
        return self.generator == "edge_cases" and self.prompt is None

    def teacher_needed(self) -> str | None:
        """None when no row needs a model: rule-built kinds only, answered by their seed rows."""
        if self.by_kind and self.answer_from == "seed" and self.kinds is not None \
                and all(transformed(k) for k in self.kinds):
            return None
        return self.teacher

    def estimated_rows_out(self, rows: int) -> int:
        """The rows it passes on, as `pond run --estimate` counts them: its input and every row it may add."""
        return rows + rows_added_upper(self)


def _seed(*parts: object) -> int:
    """A request seed from the recipe seed and a position: same run, same sampling."""
    h = hashlib.blake2b("\x00".join(map(str, parts)).encode(), digest_size=4).digest()
    return int.from_bytes(h, "little") & 0x7FFFFFFF


def _template(opts: SynthesizeOptions, name: str, ctx: StepContext | None) -> str:
    if opts.prompt is None:
        return load_text(name)
    return load_text(opts.prompt, resolve=ctx.resolve if ctx else Path)


def _list_schema(key: str, count: int, max_chars: int) -> dict:
    return {"type": "object", "additionalProperties": False, "required": [key],
            "properties": {key: {"type": "array", "minItems": count, "maxItems": count,
                                 "items": {"type": "string", "maxLength": max_chars}}}}


def _text_schema(max_chars: int) -> dict:
    return {"type": "object", "additionalProperties": False, "required": ["instruction"],
            "properties": {"instruction": {"type": "string", "maxLength": max_chars}}}


def _json_tokens(count: int, max_chars: int) -> int:
    # room for `count` strings of max_chars (English BPE ~3-4 chars a token; 2 leaves slack) + JSON
    return count * (max_chars // 2 + 8) + 24


def _pool(df: pl.DataFrame) -> tuple[list[str], list[str]]:
    rows = df.select("id", "messages", "text").to_dicts()
    return [r["id"] for r in rows], [row_prompt(r) for r in rows]


def _answers(df: pl.DataFrame) -> list[str]:
    return [row_answer(r) for r in df.select("messages", "text").to_dicts()]


def _first_answers(df: pl.DataFrame, opts: SynthesizeOptions) -> list[str] | None:
    """Each row's answer to its first prompt, where transformed cases take the seed's answer."""
    if opts.answer_from != "seed":
        return None
    return [first_answer(r) for r in df.select("messages", "text").to_dicts()]


def _examples(prompts: list[str], picks: np.ndarray, limit: int) -> str:
    return "\n".join(f"- {clip(prompts[i], limit)}" for i in picks) or "(none)"


def _failure(c: Completion | BaseException) -> str | None:
    if isinstance(c, BaseException):
        return f"teacher call failed: {c}"
    return None


# ---------------------------------------------------------------------------------- drafts


def _list_drafts(df, opts, ctx, session, template_name: str, key: str) -> list[Draft]:
    """edge_cases / self_instruct: ask for `per_call` prompts per call until n are attempted."""
    ids, prompts = _pool(df)
    usable = [i for i, p in enumerate(prompts) if p.strip()]
    if not usable and not opts.task:
        raise ValueError(f"{opts.generator} needs seed rows or a `task:` description")
    template = _template(opts, template_name, ctx)
    rng = np.random.default_rng([ctx.seed, 1])
    calls, counts, picks = [], [], []
    for c in range(math.ceil(opts.n / opts.per_call)):
        count = min(opts.per_call, opts.n - c * opts.per_call)
        pick = rng.choice(usable, size=min(opts.seeds_per_call, len(usable)), replace=False) if usable else []
        text = render(template, task=opts.task or "(not given: infer it from the examples)",
                      examples=_examples(prompts, pick, opts.max_example_chars), count=count)
        calls.append(ChatRequest([{"role": "user", "content": text}],
                                 max_tokens=_json_tokens(count, opts.max_prompt_chars),
                                 temperature=opts.temperature, seed=_seed(ctx.seed, opts.generator, c),
                                 schema=_list_schema(key, count, opts.max_prompt_chars), schema_name=key))
        counts.append(count)
        picks.append([ids[i] for i in pick])
    results = session.run(calls, ctx.track, f"{opts.generator}: writing prompts")
    drafts: list[Draft] = []
    for result, count, seed_ids in zip(results, counts, picks):
        error = _failure(result)
        items: list[str] = []
        if error is None:
            try:
                items = [str(x) for x in result.json()[key]][:count]
            except (ValueError, KeyError, TypeError) as e:
                error = f"unusable teacher reply: {e}"
        for k in range(count):
            d = Draft(len(drafts), [], list(seed_ids))
            if k < len(items):
                d.context = [{"role": "user", "content": items[k].strip()}]
            else:
                d.error = error or "teacher reply had fewer items than asked"
            drafts.append(d)
    return drafts


def _evolve_drafts(df, opts, ctx, session) -> list[Draft]:
    ids, prompts = _pool(df)
    usable = [i for i, p in enumerate(prompts) if p.strip() and len(p) <= opts.max_prompt_chars]
    if not usable:
        raise ValueError(f"evolve needs seed rows with a prompt of at most max_prompt_chars={opts.max_prompt_chars}")
    rng = np.random.default_rng([ctx.seed, 2])
    picks = rng.choice(usable, size=opts.n, replace=opts.n > len(usable))
    ops = rng.choice(len(EVOLUTIONS), size=opts.n)
    calls = []
    for k, (i, op) in enumerate(zip(picks, ops)):
        template = _template(opts, f"evolve_{EVOLUTIONS[op]}", ctx)
        calls.append(ChatRequest([{"role": "user", "content": render(template, instruction=prompts[i])}],
                                 max_tokens=_json_tokens(1, opts.max_prompt_chars), temperature=opts.temperature,
                                 seed=_seed(ctx.seed, "evolve", k), schema=_text_schema(opts.max_prompt_chars),
                                 schema_name="instruction"))
    results = session.run(calls, ctx.track, "evolve: rewriting prompts")
    drafts = []
    for k, (i, op, result) in enumerate(zip(picks, ops, results)):
        d = Draft(k, [], [ids[i]], error=_failure(result), extra={"evolution": EVOLUTIONS[op]})
        if d.error is None:
            try:
                d.context = [{"role": "user", "content": str(result.json()["instruction"]).strip()}]
            except (ValueError, KeyError, TypeError) as e:
                d.error = f"unusable teacher reply: {e}"
        drafts.append(d)
    return drafts


def _respond_drafts(df, opts, ctx) -> list[Draft]:
    rows = df.select("id", "messages").to_dicts()
    usable = [i for i, r in enumerate(rows) if context_for_answer(r["messages"] or [])]
    rng = np.random.default_rng([ctx.seed, 3])
    chosen = sorted(rng.choice(usable, size=min(opts.n, len(usable)), replace=False).tolist()) if usable else []
    return [Draft(k, context_for_answer(rows[i]["messages"]), [rows[i]["id"]], origin=i) for k, i in enumerate(chosen)]


def _novelty(drafts: list[Draft], df: pl.DataFrame, max_similarity: float | None, min_words: int = 0) -> None:
    """Reject new prompts that are empty or too short, duplicate the pool, or (with a threshold)
    resemble it. Accepted prompts join the pool, so new rows are also unique among themselves."""
    index = NoveltyIndex()
    for row_id, p in zip(*_pool(df)):
        index.add(p, row_id)
    for d in drafts:
        if d.error is not None:
            continue
        d.error = novelty_error(index, d.prompt, min_words, max_similarity)
        if d.error is None:
            index.add(d.prompt, f"new slot {d.slot}")


def _answer(drafts: list[Draft], opts: SynthesizeOptions, ctx: StepContext, session: TeacherSession) -> None:
    """Answer each draft (a transformed edge case: its real prompt, `answer_to`). An answer cut off at
    max_tokens is never kept; edge_cases also drops answers with a fault (`answer_fault`), so a row
    holds the first sound candidate (judge_picks: every sound one)."""
    for d in drafts:
        if d.error is None and "seed_answer" in d.extra:  # answer_from: seed, no call
            seed_answer = d.extra.pop("seed_answer").strip()
            d.error = (answer_fault(d.extra["answer_to"][-1]["content"], seed_answer) if seed_answer
                       else "the seed row has no answer to its first prompt")
            d.answer = seed_answer if d.error is None else None
    todo = [d for d in drafts if d.error is None and d.answer is None]
    system = [{"role": "system", "content": opts.system}] if opts.system else []
    calls = [ChatRequest(system + d.extra.get("answer_to", d.context), max_tokens=opts.max_tokens,
                         temperature=opts.answer_temperature, n=opts.answer_candidates,
                         seed=_seed(ctx.seed, opts.generator, "answer", d.slot)) for d in todo]
    for d, result in zip(todo, session.run(calls, ctx.track, f"{opts.generator}: answering")):
        if (error := _failure(result)) is not None:
            d.error = error
            continue
        asked = d.extra.get("answer_to", d.context)[-1]["content"]
        complete = [t.strip() for i, t in enumerate(result.texts) if not result.truncated(i) and t.strip()]
        faults = [answer_fault(asked, t) if opts.by_kind else None for t in complete]
        sound = [t for t, f in zip(complete, faults) if f is None]
        if sound:
            d.answer = sound[0]
            if opts.judge_picks:
                d.extra["answers"] = list(dict.fromkeys(sound))
        elif complete:
            d.error = faults[0]
        elif all(result.truncated(i) for i in range(len(result.texts))):
            d.error = f"answer cut off at max_tokens={opts.max_tokens}"
        else:
            d.error = "empty answer from the teacher"


def _reason_kind(reason: str) -> str:
    return reason.split(":", 1)[0]


def _embedder(opts: SynthesizeOptions, ctx: StepContext):
    """texts -> normalised vectors, cached under the run's cache folder (loaded only when called)."""
    def embed(texts: list[str]) -> np.ndarray:
        from curation.embed import embed_texts

        return embed_texts(texts, opts.embedding, ctx.cache_dir)
    return embed


def _reject_row_copies(drafts: list[Draft], df: pl.DataFrame, opts: SynthesizeOptions, embed) -> None:
    """The whole new row (prompt and answer, as `text`) against the seed rows and the new rows kept
    before it: the invariant holds for what the step keeps, not only for the prompts. A transformed
    case (it has `answer_to`) is not compared with its own seed row: it is that request, by design."""
    ok = [d for d in drafts if d.error is None]
    texts = [render_text(d.messages()) for d in ok]
    errors = reject_copies(texts, [f"new slot {d.slot}" for d in ok], df["text"].fill_null("").to_list(),
                           df["id"].to_list(), opts.max_cosine, embed, groups=[d.slot for d in ok],
                           own_seed=[d.seed_ids[0] if "answer_to" in d.extra else None for d in ok])
    for d, e in zip(ok, errors):
        d.error = e


def _gap_drafts(df: pl.DataFrame, opts: SynthesizeOptions, ctx: StepContext, session, embed):
    """target: gaps: the seed rows are the input rows and the raw-pool rows of under-represented
    clusters; each case draws from its cluster's."""
    from synthesis.gaps import gap_seeds, raw_pool

    pool, per_case, case_cluster, report = gap_seeds(df, raw_pool(ctx), opts.n, opts.gap_clusters, ctx.seed, embed)
    cols = ["id", "messages", "text"]
    seeds_df = pl.concat([df.select(cols), pool.select(cols)], how="vertical_relaxed")
    drafts = edge_case_drafts(*_pool(seeds_df), opts, ctx, session, _seed, embed,
                              seed_pools=[[len(df) + i for i in c] for c in per_case], answers=_answers(seeds_df),
                              first_answers=_first_answers(seeds_df, opts))
    for d, c in zip(drafts, case_cluster):
        d.extra["gap_cluster"] = c
    ctx.stats["_gap_report"] = report
    return seeds_df, drafts


def _gap_report(drafts: list[Draft], ctx: StepContext) -> dict:
    """Which clusters were seeded, with how many cases each got and how many gave a row."""
    report = ctx.stats.pop("_gap_report")
    valid = Counter(d.extra["gap_cluster"] for d in {d.slot: d for d in drafts if d.error is None}.values())
    for c in report["seeded"]:
        c["valid"] = valid.get(c["cluster"], 0)
    return report


def _expand_candidates(drafts: list[Draft]) -> list[Draft]:
    """judge_picks: one draft per complete answer, sharing the case's slot (the judge picks among them)."""
    out = []
    for d in drafts:
        answers = d.extra.pop("answers", None) if d.error is None else None
        out.extend([d] if not answers else [replace(d, answer=a, extra=dict(d.extra)) for a in answers])
    return out


def _kind_stats(drafts: list[Draft], ctx: StepContext) -> dict:
    """Per kind: asked (cases), valid (cases with a row kept), rows (with judge_picks, several a case),
    the writer calls and prompt candidates it took, and the rejection reasons of the cases with no
    row kept; a kind with nothing valid is a warning naming them (the run goes on)."""
    out: dict[str, dict] = {}
    by_slot: dict[int, list[Draft]] = {}
    for d in drafts:
        by_slot.setdefault(d.slot, []).append(d)
    for slot, ds in by_slot.items():
        d = ds[0]
        k = out.setdefault(d.extra["edge_kind"], {"asked": 0, "valid": 0, "rows": 0, "calls": 0, "candidates": 0,
                                                  "rejected_by_reason": Counter()})
        rows = sum(x.error is None for x in ds)
        k["asked"] += 1
        k["valid"] += rows > 0
        k["rows"] += rows
        k["calls"] += d.extra["calls"]
        k["candidates"] += d.extra["candidates"]
        if rows == 0:
            k["rejected_by_reason"][_reason_kind(d.error)] += 1
    warnings = []
    for name, k in out.items():
        k["rejected_by_reason"] = dict(sorted(k["rejected_by_reason"].items()))
        if k["valid"] == 0:
            why = ", ".join(f"{r} x{c}" for r, c in k["rejected_by_reason"].items())
            warnings.append(f"synthesize: the writer gave nothing usable for edge-case kind {name!r} "
                            f"({k['asked']} asked; rejected: {why})")
    for w in warnings:
        warn_once(f"{ctx.step_dir}:{w}", w)
    return {"by_kind": out, **({"warnings": warnings} if warnings else {})}


def _realism(df: pl.DataFrame, new: pl.DataFrame, embed, seed: int) -> dict:
    # one row per case: judge_picks' sibling answers share a prompt and would read as low diversity
    new = new.unique(subset=CANDIDATE_OF, keep="first", maintain_order=True) if CANDIDATE_OF in new.columns else new
    real, syn = df.select("messages", "text").to_dicts(), new.select("messages", "text").to_dicts()
    return synthetic_vs_real([row_prompt(r) for r in real], [row_answer(r) for r in real],
                             embed([r["text"] or "" for r in real]),
                             [row_prompt(r) for r in syn], [row_answer(r) for r in syn],
                             embed([r["text"] or "" for r in syn]), seed)


def synthesize(df: pl.DataFrame, opts: SynthesizeOptions, ctx: StepContext) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Add teacher-written rows to `df` (see the module docstring)."""
    t0 = time.perf_counter()
    embed = _embedder(opts, ctx)
    cache = ResponseCache(run_cache_path(ctx.run_dir, ctx.cache_dir))
    # teacher_needed() is None where no row needs a model (rule-built kinds answered by their seeds)
    with contextlib.closing(cache), teachers_of(ctx).session(opts.teacher_needed(), cache) as session:
        seeds_df = df
        if opts.by_kind and opts.target == "gaps":
            seeds_df, drafts = _gap_drafts(df, opts, ctx, session, embed)
        elif opts.by_kind:
            drafts = edge_case_drafts(*_pool(df), opts, ctx, session, _seed, embed, answers=_answers(df),
                                      first_answers=_first_answers(df, opts))
        elif opts.generator == "edge_cases":
            drafts = _list_drafts(df, opts, ctx, session, "edge_cases", "inputs")
            _novelty(drafts, df, opts.max_similarity, opts.min_prompt_words)
        elif opts.generator == "self_instruct":
            drafts = _list_drafts(df, opts, ctx, session, "self_instruct", "instructions")
            _novelty(drafts, df, opts.max_similarity, opts.min_prompt_words)
        elif opts.generator == "evolve":
            drafts = _evolve_drafts(df, opts, ctx, session)
            _novelty(drafts, df, None, opts.min_prompt_words)  # an evolved prompt resembles its seed by design
        else:
            drafts = _respond_drafts(df, opts, ctx)
        _answer(drafts, opts, ctx, session)
        if opts.by_kind:
            drafts = _expand_candidates(drafts)
            _reject_row_copies(drafts, seeds_df, opts, embed)

    base = with_seed_ids(df)
    originals = base if opts.generator == "respond" else None
    new_kept, new_rejected = split_drafts(drafts, opts.generator, STAGE, originals)
    frames_rejected = [new_rejected]
    if opts.generator == "respond" and opts.replace:
        replaced = {d.origin: nid for d, nid in zip([d for d in drafts if d.error is None], new_kept["id"])}
        mask = pl.Series([i in replaced for i in range(len(base))])
        frames_rejected.insert(0, reject(base.filter(mask), STAGE, pl.Series(
            [f"replaced by teacher answer {replaced[i]}" for i in sorted(replaced)], dtype=pl.Utf8)))
        base = base.filter(~mask)
    if opts.by_kind:  # each new row's kind (the judge's per-kind figures) and case (best_of: candidate_of)
        case = f"{ctx.step_dir.name if ctx.step_dir else STAGE}:"
        for ok, frame in ((True, "kept"), (False, "rejected")):
            ds = [d for d in drafts if (d.error is None) == ok]
            cols = [pl.Series(EDGE_KIND, [d.extra["edge_kind"] for d in ds], dtype=pl.Utf8),
                    pl.Series(CANDIDATE_OF, [case + str(d.slot) for d in ds], dtype=pl.Utf8)]
            if ok:
                new_kept = new_kept.with_columns(cols)
            else:
                new_rejected = new_rejected.with_columns(cols)
        frames_rejected = [new_rejected]
    kept = concat_like(base, [base, new_kept])
    rejected = concat_like(reject(base.head(0), STAGE, ""), frames_rejected)

    reasons = Counter(_reason_kind(r) for r in new_rejected["reason"])
    ctx.stats.update({
        "generator": opts.generator, "attempted": len(drafts), "new_rows": len(new_kept),
        "rejected_new_by_reason": dict(sorted(reasons.items())),
        **({"evolutions": dict(Counter(d.extra["evolution"] for d in drafts))} if opts.generator == "evolve" else {}),
        **(_kind_stats(drafts, ctx) if opts.by_kind else {}),
        **({"gaps": _gap_report(drafts, ctx)} if opts.by_kind and opts.target == "gaps" else {}),
        **({"synthetic_vs_real": _realism(df, new_kept, embed, ctx.seed)} if opts.by_kind and len(new_kept) else {}),
        "teacher": session.summary(), "seconds": round(time.perf_counter() - t0, 3),
    })
    return kept, rejected


# ---------------------------------------------------------------------------------- estimate


def estimate(df: pl.DataFrame | None, opts: SynthesizeOptions, ctx: StepContext | None = None,
             added: int = 0) -> dict[str, int]:
    """Upper bounds before sending anything: {"requests", "max_tokens"} (prompt + completion). The
    signature every step's `estimate` has (pond.steps); `ctx` is not needed here (nothing is looked up
    in the cache), and rows earlier generators add (`added`) are left out: the requests follow `n`,
    and the examples are drawn from `df`."""
    df = df if df is not None else pl.DataFrame(schema={"id": pl.Utf8, "messages": pl.List(pl.Struct(
        {"role": pl.Utf8, "content": pl.Utf8})), "text": pl.Utf8})
    system = [{"role": "system", "content": opts.system}] if opts.system else []
    new_prompt = [{"role": "user", "content": "x" * (opts.max_prompt_chars * BYTES_PER_CHAR)}]
    answer_upper = call_tokens_upper(system + new_prompt, opts.max_tokens)
    _, prompts = _pool(df)
    if opts.generator == "respond":
        ctxs = [context_for_answer(m or []) for m in df["messages"].to_list()]
        uppers = sorted((call_tokens_upper(system + c, opts.max_tokens) for c in ctxs if c), reverse=True)
        k = min(opts.n, len(uppers))
        return {"requests": k, "max_tokens": sum(uppers[:k])}
    if opts.generator == "evolve":
        seeds = [p for p in prompts if p.strip() and len(p) <= opts.max_prompt_chars]
        longest_seed = max((len(p.encode()) for p in seeds), default=0)
        longest_tpl = max(len(_template(opts, f"evolve_{e}", None).encode()) for e in EVOLUTIONS)
        ask = prompt_tokens_upper([{"role": "user", "content": "x" * (longest_seed + longest_tpl)}])
        ask += _json_tokens(1, opts.max_prompt_chars)
        return {"requests": 2 * opts.n, "max_tokens": opts.n * (ask + answer_upper)}
    if opts.by_kind:
        return _estimate_by_kind(prompts, opts, answer_upper)
    name = "edge_cases" if opts.generator == "edge_cases" else "self_instruct"
    calls = math.ceil(opts.n / opts.per_call)
    examples = sorted((len(clip(p, opts.max_example_chars).encode()) + 3 for p in prompts if p.strip()), reverse=True)
    fixed = len(_template(opts, name, None).encode()) + len((opts.task or "").encode()) + 64
    ask = prompt_tokens_upper([{"role": "user", "content": "x" * (fixed + sum(examples[: opts.seeds_per_call]))}])
    ask += _json_tokens(opts.per_call, opts.max_prompt_chars)
    return {"requests": calls + opts.n, "max_tokens": calls * ask + opts.n * answer_upper}


def rows_added_upper(opts: SynthesizeOptions) -> int:
    """The most rows the step adds: one per case, or with `judge_picks` every distinct complete answer
    of a case (`_expand_candidates`), up to `answer_candidates` each. A later judge step is charged
    for each of them (`pond run --estimate`)."""
    return opts.n * (opts.answer_candidates if opts.by_kind and opts.judge_picks else 1)


def _estimate_by_kind(prompts: list[str], opts: SynthesizeOptions, answer_upper: int) -> dict[str, int]:
    """Every model-written slot may take a first call (or its share of a list call) and `retries` more
    (each showing the rejected message back); a transformed slot takes none. Every slot takes one answer
    call, each reply `answer_candidates` long, but a transformed one with `answer_from: seed`."""
    from synthesis.edge_cases import _reply_tokens, kind_plan
    from synthesis.edge_kinds import kind_name, kind_template

    plan = kind_plan(opts, opts.n)
    written = [s for s in plan if not transformed(s)]
    answered = len(written) if opts.answer_from == "seed" else opts.n
    answers = answered * (answer_upper + opts.max_tokens * (opts.answer_candidates - 1))
    if not written:
        return {"requests": answered, "max_tokens": answers}
    longest_tpl = max(len(kind_template(s)[0].encode()) + len(kind_template(s)[1].encode()) for s in written)
    examples = sorted((len(clip(p, opts.max_example_chars).encode()) + 3 for p in prompts if p.strip()), reverse=True)
    ask_chars = longest_tpl + sum(examples[: opts.seeds_per_call + 1]) + 64
    per_kind = Counter(kind_name(s) for s in written)
    first_calls = len(written) if opts.per_call == 1 else sum(math.ceil(c / opts.per_call) for c in per_kind.values())
    first = first_calls * prompt_tokens_upper([{"role": "user", "content": "x" * ask_chars}])
    first += len(written) * _reply_tokens(1, opts.max_prompt_chars) * opts.candidates + first_calls * 24 * opts.candidates
    retry_ask = prompt_tokens_upper([{"role": "user", "content": "x" * (ask_chars + 3 * opts.max_prompt_chars
                                                                         * BYTES_PER_CHAR)}])
    retry = opts.retries * len(written) * (retry_ask + _reply_tokens(1, opts.max_prompt_chars) * opts.candidates)
    return {"requests": first_calls + opts.retries * len(written) + answered, "max_tokens": first + retry + answers}
