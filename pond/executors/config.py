"""Recipe options of the Ray executor (`executor: ray` + `ray: {...}`)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# Join aggregators (actors) reserve no CPU. Any fraction fragments small nodes: Ray Data spreads
# one aggregator per node, and a 0.05-CPU one leaves a 1-CPU node 0.95, where no 1-CPU task (the
# shuffle's own block tasks included) fits again, so the join waited forever. The aggregators
# mostly hold blocks until the end; their final join runs after the feeding tasks are done.
AGGREGATOR_CPUS = 0.0

# The local executor's batch: rows of a step's input it holds at once where it streams (pond.executors.local).
# 50k ShareGPT rows are ~1.5 GB in memory; below it a step reads its input whole, as before.
LOCAL_BATCH_ROWS = 50_000


class RayConfig(BaseModel):
    """Where and how the `ray` executor runs."""

    model_config = ConfigDict(extra="forbid")
    address: str | None = Field(
        None, description="Ray cluster to join: `auto` (the cluster this machine belongs to), `ray://HOST:10001` "
                          "or `HOST:6379`; default: start a private local cluster for the run")
    num_cpus: int | None = Field(None, ge=1, description="local cluster only: CPUs it may use (default: all)")
    object_store_memory: int | None = Field(
        None, ge=78_643_200, description="local cluster only: object store size in bytes (default: Ray's)")
    shard_rows: int = Field(20_000, ge=100, description="rows per Parquet shard written at ingest (the unit of "
                                                        "work of every row-wise step)")
    split_bytes: int = Field(128 * 2**20, ge=4096, description="JSONL and Parquet input files larger than "
                             "this are read in parts of about this size by several workers")
    shuffle_partitions: int | None = Field(
        None, ge=1, description="partitions of every shuffle (group-by, join, sort); default: the cluster's CPUs")
    embed_actors: int = Field(1, ge=1, description="actors holding the embedding model (each loads it once)")
    max_cc_iterations: int = Field(64, ge=1, description="most label-propagation rounds of MinHash connected "
                                                        "components (an error, not a silent cut, when exceeded)")
