"""The recipe's `retrain:` section: the drift report's settings and the rule that trains a new adapter
version after a data drop (`pond update`; the rule itself is pond.retrain, the report pond.drift_report).

Plain settings, importing nothing of pond (the embedding settings are curation's): the recipe, the update, the drift report and the retrain rule
all read them, so they sit below every one of those.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from curation.embed import EmbeddingOptions


class RetrainWhen(BaseModel):
    model_config = ConfigDict(extra="forbid")

    new_rows: int | None = Field(None, ge=1, description="curated rows added by drops since the last adapter version")
    drift_p: float | None = Field(None, gt=0.0, lt=1.0,
                                  description="the drop's embedding drift test gives a p-value below this")
    loss_increase: float | None = Field(
        None, gt=0.0, description="the current adapter's loss on the drop's rows is more than this fraction above "
                                  "its loss on the held-out set")


class DriftOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(0.01, gt=0.0, lt=1.0, description="drift.json's `drifted` is true when the test's p is below this")
    sample: int = Field(1000, ge=10, description="rows drawn from each side (pond, drop) for the embedding test")
    permutations: int = Field(500, ge=19, description="permutations of the MMD test (smallest p: 1 / (1 + this))")
    clusters: int = Field(8, ge=2, description="k-means clusters for new and vanished clusters")
    loss_rows: int = Field(64, ge=1, description="drop rows (and held-out rows) scored by the current adapter")
    rejection_confidence: float = Field(0.99, gt=0.5, lt=1.0,
                                        description="binomial interval within which a step's rejection rate is not flagged")
    embedding: EmbeddingOptions | None = Field(
        None, description="embedding model and backend of the samples (e.g. {backend: openvino-int8}); default: "
                          "the first embedding step's (`embedding:` of semantic_dedup, select, ...), else the default model")


class RetrainConfig(BaseModel):
    """Continuous curation (`pond update`): the drift report's settings and when to train a new adapter."""

    model_config = ConfigDict(extra="forbid")

    when: RetrainWhen = Field(default_factory=RetrainWhen, description="conditions checked after every drop")
    any: bool = Field(True, description="true: any listed condition fires; false: all must hold")
    drift: DriftOptions = Field(default_factory=DriftOptions, description="settings of each drop's drift report")
    mlflow: bool = Field(True, description="log and register every adapter version with MLflow")
    mlflow_uri: str | None = Field(None, description="MLflow tracking URI; default: sqlite:///<run>/mlflow.db")
