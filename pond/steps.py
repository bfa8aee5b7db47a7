"""The step registry: recipe `kind` -> (module, function, options class, how it distributes).

Imported lazily so that a curation-only recipe never loads torch or the teacher client.
Steps never import pond; this table is the only place that knows them all. The executors read a
step's `distribute` and never its name (docs/architecture.md, "How a step is distributed"):
- LOCAL: gathered on the driver and run by the local runner, on either executor;
- ROWWISE: the step function itself, shard by shard (its rows never need each other);
- ACTOR: row-wise, in long-lived actors that keep a model loaded between shards;
- "module:function": a distributed form `fn(executor, options, prev, step_dir, ctx) -> (shard
  summaries, figures)` that wires shuffles and joins around the step's own curation functions.
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

    def load(self) -> tuple[type[StepOptions], Callable]:
        mod = importlib.import_module(self.module)
        return getattr(mod, self.options), getattr(mod, self.function)

    def options_model(self) -> type[StepOptions]:
        return getattr(importlib.import_module(self.module), self.options)

    @property
    def distributed(self) -> bool:
        return self.distribute != LOCAL

    def distributed_form(self) -> Callable:
        """The named distributed function (`distribute: "module:function"`)."""
        module, _, function = self.distribute.partition(":")
        if not function:
            raise ValueError(f"{self.module}.{self.function}: distribute={self.distribute!r} names no function")
        return getattr(importlib.import_module(module), function)


STEPS: dict[str, StepSpec] = {
    "holdout": StepSpec("curation.holdout", "holdout", "HoldoutOptions",
                        "set aside n valid raw rows as the held-out set, before any curation", writes_heldout=True),
    "exact_dedup": StepSpec("curation.exact_dedup", "exact_dedup", "ExactDedupOptions",
                            "drop rows whose normalised text equals an earlier row's",
                            "pond.executors.ray_dedup:exact_dedup_ray", dedups_against_reference=True),
    "minhash_dedup": StepSpec("curation.minhash", "minhash_dedup", "MinhashDedupOptions",
                              "near-duplicate removal: MinHash LSH candidates verified by exact Jaccard",
                              "pond.executors.ray_dedup:minhash_dedup_ray", dedups_against_reference=True),
    "heuristics": StepSpec("curation.heuristics", "heuristics", "HeuristicsOptions",
                           "Gopher/C4-style quality rules and conversation rules", ROWWISE),
    "answer_faults": StepSpec("curation.answer_faults_step", "answer_faults", "AnswerFaultsOptions",
                              "drop answers cut off, echoing the prompt or in another language, and "
                              "conversations ending on the user", ROWWISE),
    "pii": StepSpec("curation.pii", "pii", "PiiOptions", "redact, drop or flag personal data and secrets", ROWWISE),
    "decontaminate": StepSpec("curation.decontaminate", "decontaminate", "DecontaminateOptions",
                              "drop rows sharing an n-gram with an eval set"),
    "embed_quality": StepSpec("curation.embed_quality", "embed_quality", "EmbedQualityOptions",
                              "score rows by embedding (reference set or classifier) and filter", ACTOR,
                              shard_figures=("score", "reference", "classifier", "rows_per_second")),
    "semantic_dedup": StepSpec("curation.semantic_dedup", "semantic_dedup", "SemanticDedupOptions",
                               "SemDeDup: drop near-identical meanings within k-means clusters",
                               "pond.executors.ray_embed:semantic_dedup_ray", dedups_against_reference=True),
    "ifd": StepSpec("curation.ifd", "ifd", "IfdOptions",
                    "score rows by Instruction-Following Difficulty (loss with / without the prompt) under a "
                    "small causal LM"),
    "select": StepSpec("curation.selection", "select", "SelectOptions",
                       "choose n rows: random, longest, quality, quality_diverse, kcenter"),
    "synthesize": StepSpec("synthesis.generators", "synthesize", "SynthesizeOptions",
                           "teacher writes new rows: edge_cases, self_instruct, evolve, respond"),
    "judge": StepSpec("synthesis.judge", "judge", "JudgeOptions",
                      "teacher scores rows against a rubric: drops those below min_score, or (min_score: null) "
                      "only writes the score for select to rank by"),
}
