"""The ray executor gives the local executor's results: same kept ids (in order), same rejection
reasons, same curated set — on a few thousand rows, on a local Ray cluster of two 1-CPU worker
nodes started here."""
from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest

from tests import limits
from tests.test_example_step import registered  # noqa: F401 (a fixture: the example step in the step table)

pytest.importorskip("ray")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from curation.scaled_corpus import write_corpus  # noqa: E402
from pond.executors.shards import read_output  # noqa: E402
from pond.recipe import parse_recipe  # noqa: E402
from pond.runner import Runner, write_manifest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_cluster():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": 200 * 2**20, "include_dashboard": False})
    for _ in range(2):  # two worker nodes
        # one scheduling slot each: the smallest nodes there are. Join aggregators that reserved a
        # fraction of a CPU left each node 0.95 free, and the MinHash joins stalled (ray_dedup)
        cluster.add_node(num_cpus=1, object_store_memory=200 * 2**20)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def curate_both(text: str, work: Path, shared_cache: bool = True) -> dict[str, Path]:
    """The recipe curated by each executor in `work`: {executor: its run folder} (with its manifest)."""
    out = {}
    for executor in ("local", "ray"):
        recipe = parse_recipe(text)
        recipe.executor = executor
        cache = work / ("cache" if shared_cache else f"cache-{executor}")
        runner = Runner(recipe, work / f"run-{executor}", work, cache_dir=cache)
        runner.curate()
        write_manifest(runner)
        out[executor] = runner.out
    return out


def run_both(tmp_path: Path, steps: str, rows: int, base_limit: int, shared_cache: bool = True) -> tuple[Path, Path]:
    write_corpus(tmp_path / "data", rows, files=2, base_limit=base_limit)
    text = (f"name: eq\ninput: {{path: data/*.jsonl}}\nseed: 3\n"
            f"ray: {{shard_rows: 400, shuffle_partitions: 2}}\nsteps:\n{steps}")
    out = curate_both(text, tmp_path, shared_cache)
    return out["local"], out["ray"]


def assert_same(local: Path, ray_run: Path) -> None:
    steps = sorted(p.name for p in (local / "steps").iterdir())
    assert steps == sorted(p.name for p in (ray_run / "steps").iterdir())
    for name in steps:
        a, b = local / "steps" / name, ray_run / "steps" / name
        ka, kb = read_output(a / "kept.parquet"), read_output(b / "kept.parquet")
        assert ka["id"].to_list() == kb["id"].to_list(), name
        assert ka.columns == kb.columns, name
        ra, rb = read_output(a / "rejected.parquet"), read_output(b / "rejected.parquet")
        assert sorted(zip(ra["id"], ra["reason"])) == sorted(zip(rb["id"], rb["reason"])), name
        assert ra.columns == rb.columns, name
        sa, sb = (json.loads((d / "stats.json").read_text()) for d in (a, b))
        assert (sa["in"], sa["out"], sa["rejected"]) == (sb["in"], sb["out"], sb["rejected"]), name
        assert (b / "DONE").exists()
    ca, cb = pl.read_parquet(local / "curated.parquet"), pl.read_parquet(ray_run / "curated.parquet")
    assert ca.equals(cb)
    assert json.loads((ray_run / "manifest.json").read_text())["steps"][-1]["out"] == len(cb)


@pytest.mark.slow  # ~30 s; make test keeps Ray = local on ingest and on the example step
@pytest.mark.timeout(limits.RAY_STALL_S)  # ~1 min; a stalled shuffle fails here, with its stack, not at CI's limit
def test_ray_equals_local_on_dedup_and_filters(tmp_path, ray_cluster):
    steps = ("  - exact_dedup: {}\n  - heuristics: {}\n  - pii: {action: redact}\n"
             "  - minhash_dedup: {threshold: 0.7, keep: longest}\n  - holdout: {n: 20}\n")
    local, ray_run = run_both(tmp_path, steps, rows=2400, base_limit=1500)
    assert_same(local, ray_run)
    stats = json.loads((ray_run / "steps" / "04-minhash_dedup" / "stats.json").read_text())
    assert stats["executor"] == "ray" and stats["duplicates"] > 50 and stats["clusters"] > 10
    assert (ray_run / "steps" / "04-minhash_dedup" / "kept.parquet").is_dir()  # sharded by the workers
    exact = json.loads((ray_run / "steps" / "01-exact_dedup" / "stats.json").read_text())
    assert exact["rejected"] > 100
    assert (ray_run / "heldout.parquet").exists()  # a driver step after distributed ones
    # the ray run resumes like a local one: nothing re-runs
    recipe = parse_recipe((ray_run / "recipe.yaml").read_text())
    again = Runner(recipe, ray_run, tmp_path, cache_dir=tmp_path / "cache")
    again.curate()
    assert all(s.get("skipped") for s in again.step_stats)


def test_big_input_files_are_read_in_parts_with_the_local_ids(tmp_path, ray_cluster):
    """JSONL byte ranges and Parquet row-group runs, each read by its own task: the same ids, line
    numbers and rejections as one local pass, with malformed, blank, non-UTF-8 and over-long lines
    (one longer than a part)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curation.ingest import source_names
    from pond.executors.ray_ingest import plan_parts

    data = tmp_path / "data"
    data.mkdir()
    rows = [{"text": f"row {i}: " + "word " * (i % 17)} for i in range(400)]
    lines = [json.dumps(r) for r in rows]
    lines[50] = '{"text": oops'  # bad JSON
    lines[120] = ""  # blank: layout, not a row
    lines[121] = "   "
    lines[200] = json.dumps({"text": "long " * 3000})  # longer than a part
    with open(data / "a.jsonl", "wb") as f:
        for i, line in enumerate(lines):
            f.write((b"\xff\xfe not utf-8" if i == 300 else line.encode()) + b"\n")
        f.write(json.dumps({"text": "last line, no newline"}).encode())
    pq.write_table(pa.Table.from_pylist(rows[:350]), data / "b.parquet", row_group_size=40)
    files = [data / "a.jsonl", data / "b.parquet"]
    parts = plan_parts(files, source_names(files, tmp_path), "auto", 4096)
    assert sum(p["index"] == 0 for p in parts) >= 5 and sum(p["index"] == 1 for p in parts) >= 2

    text = "name: split\ninput: {path: [data/a.jsonl, data/b.parquet]}\nray: {split_bytes: 4096, shard_rows: 100}\n"
    out = {e: run / "steps" / "00-ingest" for e, run in curate_both(text, tmp_path).items()}
    ka, kb = (read_output(out[e] / "kept.parquet") for e in ("local", "ray"))
    assert ka["id"].to_list() == kb["id"].to_list() and len(ka) == 400 + 350 - 3
    ra, rb = (read_output(out[e] / "rejected.parquet").sort("id") for e in ("local", "ray"))
    assert ra.select("id", "line", "reason", "detail").equals(rb.select("id", "line", "reason", "detail"))
    assert sorted(ra["line"].to_list()) == [51, 301]
    assert len(list((out["ray"] / "kept.parquet").iterdir())) >= 7  # written by the parts' tasks


@pytest.mark.slow  # ~2 min alone, ~5 on a busy machine: the model encodes every row twice
def test_ray_equals_local_on_embedding_steps(tmp_path, ray_cluster):
    """embed_quality in actors and semantic_dedup (actors embed, the driver clusters); each
    executor with its own embedding cache, so the actors really encode."""
    pytest.importorskip("sentence_transformers")
    gold = ROOT / "recipes" / "data" / "gold.jsonl"
    steps = (f"  - exact_dedup: {{}}\n  - embed_quality: {{reference: {gold}, min_score: 0.15}}\n"
             f"  - semantic_dedup: {{eps: 0.08, cluster_size: 100, keep: quality}}\n")
    local, ray_run = run_both(tmp_path, steps, rows=700, base_limit=500, shared_cache=False)
    assert_same(local, ray_run)
    assert json.loads((ray_run / "steps" / "03-semantic_dedup" / "stats.json").read_text())["duplicates"] > 0
    assert (tmp_path / "cache-ray" / "embeddings").is_dir()  # the actors encoded, not a cache shared with local


def test_recipe_executor_options():
    from pond.recipe import RecipeError

    r = parse_recipe("name: x\ninput: {path: a.jsonl}\nexecutor: ray\nray: {address: auto, shard_rows: 1000}\n")
    assert r.executor == "ray" and r.ray.address == "auto" and r.ray.shard_rows == 1000
    assert "executor: ray" in r.to_yaml()
    assert parse_recipe("name: x\ninput: {path: a.jsonl}\n").executor == "local"
    with pytest.raises(RecipeError, match=r"<recipe>:4: ray.workers: unknown key"):
        parse_recipe("name: x\ninput: {path: a.jsonl}\nexecutor: ray\nray: {workers: 3}\n")
    with pytest.raises(RecipeError, match="executor"):
        parse_recipe("name: x\ninput: {path: a.jsonl}\nexecutor: spark\n")


def test_merged_shard_stats():
    from pond.executors.ray_exec import merge_stats

    merged = merge_stats([{"rows_with_pii": 2, "by_type": {"email": 1}, "mode": "reference"},
                          {"rows_with_pii": 3, "by_type": {"email": 2, "phone": 1}, "mode": "reference"}])
    assert merged == {"rows_with_pii": 5, "by_type": {"email": 3, "phone": 1}, "mode": "reference"}


def test_cli_executor_flag(tmp_path):
    from typer.testing import CliRunner

    from pond.cli import app

    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\ninput: {path: a.jsonl}\n")
    result = CliRunner().invoke(app, ["run", str(recipe), "--executor", "spark", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "expected local or ray" in result.output


def test_ray_ingest_reads_files_as_they_come_like_local(tmp_path, ray_cluster):
    """Compressed files, a byte-order mark with CRLF, content parts, broken Unicode and the fuzz
    test's rows: the Ray executor's ingest keeps the same rows and gives the same reasons."""
    import gzip

    import zstandard
    from hypothesis import HealthCheck, given, settings

    from tests.fuzz_rows import FILE_LINES

    @settings(max_examples=3, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                     HealthCheck.data_too_large])
    @given(lines=FILE_LINES)
    def check(lines):
        case = tmp_path / f"case-{len(list(tmp_path.iterdir()))}"
        data = case / "data"
        data.mkdir(parents=True)
        good = [json.dumps({"prompt": f"question {i} here", "response": f"answer {i} there"}) for i in range(40)]
        (data / "a.jsonl.gz").write_bytes(gzip.compress(
            ("\n".join(good[:20] + ['{"text": "half \\ud800 pair"}'] + good[20:]) + "\n").encode()))
        (data / "b.jsonl").write_bytes(b"\xef\xbb\xbf" + ("\r\n".join(good) + "\r\n").encode())
        parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"},
                                                           {"type": "image_url", "image_url": {}}]},
                              {"role": "assistant", "content": "hello"}]}
        (data / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
            (json.dumps(parts) + "\n" + "\n".join(good[:5]) + "\n").encode()))
        (data / "d.jsonl").write_bytes(b"\n".join([g.encode() for g in good[:3]] + lines) + b"\n")
        text = "name: asis\ninput: {path: data}\nray: {split_bytes: 4096, shard_rows: 100}\n" \
               "steps:\n  - heuristics: {}\n  - pii: {action: redact}\n"
        out = curate_both(text, case)
        for step in ("00-ingest", "01-heuristics", "02-pii"):
            ka, kb = (read_output(out[e] / "steps" / step / "kept.parquet") for e in ("local", "ray"))
            assert ka["id"].to_list() == kb["id"].to_list(), step
            ra, rb = (read_output(out[e] / "steps" / step / "rejected.parquet").sort("id") for e in ("local", "ray"))
            assert ra.select("id", "reason").equals(rb.select("id", "reason")), step
        rejected = read_output(out["ray"] / "steps" / "00-ingest" / "rejected.parquet")
        assert {"invalid_unicode", "non_text_part"} <= set(rejected["reason"].to_list())

    check()


def _steps_with_reference(tmp_path: Path) -> tuple[pl.DataFrame, pl.DataFrame, list]:
    """Reference rows and new rows with copies of them (tests/test_dedup_reference.py), more new rows
    than one shard holds; the three dedup steps with keep: longest where they have a keep rule."""
    from curation.exact_dedup import ExactDedupOptions
    from curation.ingest import records_from_dicts
    from curation.minhash import MinhashDedupOptions
    from curation.semantic_dedup import SemanticDedupOptions
    from tests.test_dedup_reference import NEW, POND

    filler = [f"note {i}: " + " ".join(f"w{(i * 7 + j) % 53}" for j in range(12)) for i in range(150)]
    pond = records_from_dicts([{"text": t} for t in POND], source="pond")
    new = records_from_dicts([{"text": t} for t in NEW + filler + NEW[:2]], source="drop")
    steps = [("exact_dedup", ExactDedupOptions()),
             ("minhash_dedup", MinhashDedupOptions(threshold=0.7, ngram=3, keep="longest")),
             ("semantic_dedup", SemanticDedupOptions(eps=0.1, keep="longest", cluster_size=50))]
    return pond, new, steps


@pytest.mark.slow  # ~20 s; dedup against reference rows stays in make test locally (test_dedup_reference.py)
@pytest.mark.timeout(limits.RAY_STALL_S)
def test_ray_dedup_with_reference_rows_equals_local(tmp_path, ray_cluster):
    """Each distributed dedup form with ctx.reference: the local step's kept ids, reasons,
    duplicate_of and against_reference figures; the reference rows' shards are gone after."""
    from curation.step import StepContext
    from pond.executors.config import RayConfig
    from pond.executors.ray_exec import RayExecutor
    from pond.executors.shards import POS, write_shard
    from pond.steps import STEPS

    pond, new, steps = _steps_with_reference(tmp_path)
    prev = tmp_path / "prev"
    for s in range(0, len(new), 100):  # two shards
        write_shard(new.slice(s, 100).with_columns((pl.int_range(pl.len()) + s).alias(POS)), prev)
    ex = RayExecutor(RayConfig(shard_rows=100, shuffle_partitions=2))
    ex.start()
    for kind, opts in steps:
        local = StepContext(cache_dir=tmp_path / "cache", reference=pond)
        kept, rejected = STEPS[kind].load()[1](new, opts, local)
        ctx = StepContext(cache_dir=tmp_path / "cache", reference=pond)
        step_dir = tmp_path / kind
        figures = ex.run_step(kind, opts, prev, step_dir, ctx)
        ray_kept, ray_rej = read_output(step_dir / "kept.parquet"), read_output(step_dir / "rejected.parquet")
        assert ray_kept["id"].to_list() == kept["id"].to_list(), kind
        assert sorted(ray_rej.select("id", "reason", "duplicate_of").rows()) == \
            sorted(rejected.select("id", "reason", "duplicate_of").rows()), kind
        assert figures["against_reference"] == local.stats["against_reference"], kind
        assert local.stats["against_reference"]["duplicates_of_reference_rows"] >= 1, kind
        assert not (step_dir / "_reference").exists()


@pytest.mark.slow  # ~1 min: two runs and their drops, each curated on both executors
@pytest.mark.timeout(limits.RAY_STALL_S)
def test_pond_update_on_ray_equals_local(tmp_path, ray_cluster, sharegpt_df):
    """A `pond update` drop of a run made with `executor: ray` runs on Ray, dedups against the pond
    (keep: longest loses to it) and gives the local drop's kept ids, reasons and curated set."""
    from pond.update import update
    from tests.test_update import conversations, near_copy, write_jsonl

    rows = conversations(sharegpt_df.filter(pl.col("messages").list.len() >= 2).head(200))
    base, new = rows[:120], rows[120:]
    longer = [{"messages": r["messages"][:-1] + [{"role": "assistant",
                                                  "content": r["messages"][-1]["content"] + " Thanks, and more."}]}
              for r in base[20:24]]
    write_jsonl(tmp_path / "a.jsonl", base)
    write_jsonl(tmp_path / "b.jsonl", new + base[:6] + [near_copy(r) for r in base[10:14]] + longer + new[:3])
    steps = ("  - holdout: {n: 10}\n  - exact_dedup: {}\n  - minhash_dedup: {threshold: 0.7, keep: longest}\n"
             "  - heuristics: {min_words: 3}\n")
    text = (f"name: drops\ninput: {{path: a.jsonl}}\nseed: 0\nray: {{shard_rows: 100, shuffle_partitions: 2}}\n"
            f"steps:\n{steps}")
    runs = curate_both(text, tmp_path)
    for run in runs.values():
        update(run, [tmp_path / "b.jsonl"], cache_dir=tmp_path / "cache", retrain=False)
    drops = {e: run / "drops" / "001" for e, run in runs.items()}
    for name in sorted(p.name for p in (drops["local"] / "steps").iterdir()):
        a, b = drops["local"] / "steps" / name, drops["ray"] / "steps" / name
        assert read_output(a / "kept.parquet")["id"].to_list() == read_output(b / "kept.parquet")["id"].to_list()
        ra, rb = (read_output(d / "rejected.parquet") for d in (a, b))
        assert sorted(zip(ra["id"], ra["reason"])) == sorted(zip(rb["id"], rb["reason"])), name
    assert (drops["ray"] / "steps" / "02-exact_dedup" / "kept.parquet").is_dir()  # the drop ran on Ray
    mh = [json.loads((d / "steps" / "03-minhash_dedup" / "stats.json").read_text())["against_reference"]
          for d in drops.values()]
    assert mh[0] == mh[1] and mh[0]["reference_wins_over_keep_rule"] >= 1
    curated = [pl.read_parquet(run / "curated.parquet") for run in runs.values()]
    assert curated[0]["id"].to_list() == curated[1]["id"].to_list()


@pytest.mark.timeout(limits.RAY_STALL_S)
def test_a_new_rowwise_step_runs_locally_and_on_ray_with_the_same_rows(tmp_path, registered, ray_cluster):
    """docs/architecture.md's worked example (tests/example_step.py): one file and one line, and Ray runs it."""
    local, ray_run = run_both(tmp_path, "  - max_chars: {max_chars: 300}\n", rows=900, base_limit=600)
    assert_same(local, ray_run)
    stats = json.loads((ray_run / "steps" / "01-max_chars" / "stats.json").read_text())
    assert stats["executor"] == "ray" and stats["rejected"] > 0 and stats["too_long"] == stats["rejected"]
    assert (ray_run / "steps" / "01-max_chars" / "kept.parquet").is_dir()  # sharded by the workers
