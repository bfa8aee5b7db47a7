"""The step registry: recipe `kind` -> (module, function, options class).

Imported lazily so that a curation-only recipe never loads torch or the teacher client.
Steps never import pond; this table is the only place that knows them all.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from curation.step import StepOptions


@dataclass(frozen=True)
class StepSpec:
    module: str
    function: str
    options: str
    summary: str

    def load(self) -> tuple[type[StepOptions], Callable]:
        mod = importlib.import_module(self.module)
        return getattr(mod, self.options), getattr(mod, self.function)

    def options_model(self) -> type[StepOptions]:
        return getattr(importlib.import_module(self.module), self.options)


STEPS: dict[str, StepSpec] = {
    "holdout": StepSpec("curation.holdout", "holdout", "HoldoutOptions",
                        "set aside n valid raw rows as the held-out set, before any curation"),
    "exact_dedup": StepSpec("curation.exact_dedup", "exact_dedup", "ExactDedupOptions",
                            "drop rows whose normalised text equals an earlier row's"),
    "minhash_dedup": StepSpec("curation.minhash", "minhash_dedup", "MinhashDedupOptions",
                              "near-duplicate removal: MinHash LSH candidates verified by exact Jaccard"),
    "heuristics": StepSpec("curation.heuristics", "heuristics", "HeuristicsOptions",
                           "Gopher/C4-style quality rules and conversation rules"),
    "pii": StepSpec("curation.pii", "pii", "PiiOptions", "redact, drop or flag personal data and secrets"),
    "decontaminate": StepSpec("curation.decontaminate", "decontaminate", "DecontaminateOptions",
                              "drop rows sharing an n-gram with an eval set"),
    "embed_quality": StepSpec("curation.embed_quality", "embed_quality", "EmbedQualityOptions",
                              "score rows by embedding (reference set or classifier) and filter"),
    "semantic_dedup": StepSpec("curation.semantic_dedup", "semantic_dedup", "SemanticDedupOptions",
                               "SemDeDup: drop near-identical meanings within k-means clusters"),
    "select": StepSpec("curation.selection", "select", "SelectOptions",
                       "choose n rows: random, longest, quality, quality_diverse, kcenter"),
    "synthesize": StepSpec("synthesis.generators", "synthesize", "SynthesizeOptions",
                           "teacher writes new rows: edge_cases, self_instruct, evolve, respond"),
    "judge": StepSpec("synthesis.judge", "judge", "JudgeOptions",
                      "teacher scores rows against a rubric and drops those below a threshold"),
}
