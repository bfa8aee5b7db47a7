"""The step registry: recipe `kind` -> (module, function, options class, how it distributes, traits).

Imported lazily so that a curation-only recipe never loads torch or the teacher client.
Steps never import pond; this table is the only place that knows them all. The executors read a
step's `distribute` and never its name (docs/architecture.md, "How a step is distributed"):
- LOCAL: gathered on the driver and run by the local runner, on either executor;
- ROWWISE: the step function itself, shard by shard (its rows never need each other);
- ACTOR: row-wise, in long-lived actors that keep a model loaded between shards;
- "module:function": a distributed form `fn(executor, options, prev, step_dir, ctx) -> (shard
  summaries, figures)` that wires shuffles and joins around the step's own curation functions.

The runner, `pond update`, the recipe checks, the estimate and the reports ask a step's traits
(the StepSpec fields below) and its options' methods, never its kind, so a new step is its module
plus one line here. What the estimate reads from a step's module, where it has them:
- `estimate(df, opts, ctx=None, added=0)`: a teacher step's requests and tokens (`added`: rows
  earlier generators write, which do not exist yet);
- `estimate_compute(df, opts, cache_dir)`: the forward passes of a local scorer;
and from its options: `rows_out_upper(rows)`, the most rows it passes on when that is not the rows
it read. The report reads the options' `score_columns()`: the columns the step writes scores to.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from curation.step import StepOptions


LOCAL = "local"
ROWWISE = "rowwise"
ACTOR = "actor"


@dataclass(frozen=True)
class StepSpec:
    module: str
    function: str
    options: str
    summary: str
    distribute: str = LOCAL
    # figures one shard reports that do not add up across shards (percentiles, per-file figures)
    shard_figures: tuple[str, ...] = ()
    # its rejected rows are the run's held-out set (heldout.parquet); a `pond update` drop draws none
    writes_heldout: bool = False
    # a dedup step: takes reference rows (StepContext.reference) that it never drops and that new rows
    # duplicate; `pond update` hands it the pond's rows
    dedups_against_reference: bool = False
    # a local step whose verdict on a row needs no other row and is the same in a `pond update` drop as in
    # the run (row-wise and actor steps are so by how they distribute; `per_row` says it for all three)
    row_by_row: bool = False
    # embeds the rows it reads with the shared embedding model (curation.embed): the embedding cache makes
    # the run's first such step pay and the later ones read it (`--estimate` charges the first only)
    embeds_rows: bool = False
    # its teacher (options.teacher_needed()) writes new rows: a judge on the same model judges its own rows
    teacher_writes_rows: bool = False
    # its teacher judges rows; its options have `rows` (all, synthetic, real), `self_judge`, `calibrate` and
    # `score_columns()`: the recipe makes a model judging rows it wrote say so, and warns of two judges
    # writing one column
    teacher_judges_rows: bool = False
    # writes preference pairs (chosen/rejected columns): what `train: {method: dpo}` and a curated+dpo arm need
    makes_preference_pairs: bool = False
    # "module:function" of its form over an input read in batches (pond.executors.local.run_marked): a dedup
    # that holds keys and verdicts only; None: the local executor streams it only if it is row-wise or actor
    streamed: str | None = None
    # rows per second on the local executor, on this machine kind (pond.costs; where each figure was measured
    # is said at its line); None: not measured (the estimate uses the slowest measured rate)
    rows_per_s: float | None = None

    def load(self) -> tuple[type[StepOptions], Callable]:
        mod = importlib.import_module(self.module)
        return getattr(mod, self.options), getattr(mod, self.function)

    def options_model(self) -> type[StepOptions]:
        return getattr(importlib.import_module(self.module), self.options)

    def module_function(self, name: str) -> Callable | None:
        """The step module's function `name` (`estimate`, `estimate_compute`), None where it has none."""
        return getattr(importlib.import_module(self.module), name, None)

    @property
    def distributed(self) -> bool:
        return self.distribute != LOCAL

    @property
    def per_row(self) -> bool:
        """Its verdict on a row needs no other row: row-wise, actor, or a local step said to be so."""
        return self.distribute in (ROWWISE, ACTOR) or self.row_by_row

    def distributed_form(self) -> Callable:
        """The named distributed function (`distribute: "module:function"`)."""
        return _named(self.distribute, f"{self.module}.{self.function}: distribute")

    def streamed_form(self) -> Callable | None:
        """The named function of the step over batches (`streamed: "module:function"`), None where it has none."""
        return _named(self.streamed, f"{self.module}.{self.function}: streamed") if self.streamed else None


def _named(ref: str, what: str) -> Callable:
    module, _, function = ref.partition(":")
    if not function:
        raise ValueError(f"{what}={ref!r} names no function")
    return getattr(importlib.import_module(module), function)


# rows_per_s: `pond run` of recipes/quickstart.yaml's curation steps (2,000 ShareGPT rows, an empty embedding
# cache), AMD EPYC family 25 model 17, 2 cores, native bf16, 2026-12-06, the machine shared with three other
# jobs (load average ~10, so these are slow figures): each step's stats.json rows in / seconds. Both CPU
# classes of pond.costs use them (no model in them).
STEPS: dict[str, StepSpec] = {
    "holdout": StepSpec("curation.holdout", "holdout", "HoldoutOptions",
                        "set aside n valid raw rows as the held-out set, before any curation", writes_heldout=True,
                        streamed="curation.holdout:stream_marks", rows_per_s=150000.0),  # 1,980 rows in 0.013 s
    "exact_dedup": StepSpec("curation.exact_dedup", "exact_dedup", "ExactDedupOptions",
                            "drop rows whose normalised text equals an earlier row's",
                            "pond.executors.ray_dedup:exact_dedup_ray", dedups_against_reference=True,
                            streamed="curation.exact_dedup:stream_marks", rows_per_s=2339.0),  # 1,920 rows in 0.82 s
    "minhash_dedup": StepSpec("curation.minhash", "minhash_dedup", "MinhashDedupOptions",
                              "near-duplicate removal: MinHash LSH candidates verified by exact Jaccard",
                              "pond.executors.ray_dedup:minhash_dedup_ray", dedups_against_reference=True,
                              streamed="curation.minhash_stream:stream_marks", rows_per_s=2904.0),  # 1,902 rows in 0.66 s
    "heuristics": StepSpec("curation.heuristics", "heuristics", "HeuristicsOptions",
                           "Gopher/C4-style quality rules and conversation rules", ROWWISE,
                           rows_per_s=213.0),  # 1,899 rows in 8.9 s
    "answer_faults": StepSpec("curation.answer_faults_step", "answer_faults", "AnswerFaultsOptions",
                              "drop answers cut off, echoing the prompt or in another language, and "
                              "conversations ending on the user", ROWWISE),
    "pii": StepSpec("curation.pii", "pii", "PiiOptions", "redact, drop or flag personal data and secrets", ROWWISE,
                    rows_per_s=1195.0),  # 1,089 rows in 0.91 s
    "decontaminate": StepSpec("curation.decontaminate", "decontaminate", "DecontaminateOptions",
                              "drop rows sharing an n-gram with an eval set", row_by_row=True,
                              streamed="curation.decontaminate:stream_marks", rows_per_s=1606.0),  # 1,089 rows in 0.68 s
    "embed_quality": StepSpec("curation.embed_quality", "embed_quality", "EmbedQualityOptions",
                              "score rows by embedding (reference set or classifier) and filter", ACTOR,
                              shard_figures=("score", "reference", "classifier", "rows_per_second"),
                              embeds_rows=True),
    "semantic_dedup": StepSpec("curation.semantic_dedup", "semantic_dedup", "SemanticDedupOptions",
                               "SemDeDup: drop near-identical meanings within k-means clusters",
                               "pond.executors.ray_embed:semantic_dedup_ray", dedups_against_reference=True,
                               embeds_rows=True,
                               rows_per_s=4010.0),  # 405 rows in 0.10 s, its embeddings cached by embed_quality
    "ifd": StepSpec("curation.ifd", "ifd", "IfdOptions",
                    "score rows by Instruction-Following Difficulty (loss with / without the prompt) under a "
                    "small causal LM", row_by_row=True),
    "select": StepSpec("curation.selection", "select", "SelectOptions",
                       "choose n rows: random, longest, quality, quality_diverse, kcenter",
                       rows_per_s=4563.0),  # 397 rows in 0.087 s
    "synthesize": StepSpec("synthesis.generators", "synthesize", "SynthesizeOptions",
                           "teacher writes new rows: edge_cases, self_instruct, evolve, respond",
                           teacher_writes_rows=True),
    "judge": StepSpec("synthesis.judge", "judge", "JudgeOptions",
                      "teacher scores rows against a rubric: drops those below min_score, or (min_score: null) "
                      "only writes the score for select to rank by", row_by_row=True, teacher_judges_rows=True),
    "preference_pairs": StepSpec("synthesis.pairs", "preference_pairs", "PreferencePairsOptions",
                                 "DPO pairs (prompt, chosen, rejected): each case's best- and worst-judged answers",
                                 makes_preference_pairs=True),
}
