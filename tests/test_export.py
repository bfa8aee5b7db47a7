"""`pond export`: every format from a real run (real ShareGPT rows, synthetic rows from a fake
OpenAI-compatible teacher), read back through pond's own ingest to the same messages; each format's
rules; the config stanzas against the trainers' documented schemas; the lm-eval task through
lm-eval's own TaskManager; the dataset card's lineage through `datasets.load_from_disk`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from curation.ingest import read_records
from pond import layout
from pond.export import FORMATS, ExportError, export_run
from pond.export.chat import write_rows
from pond.pipeline import run_pipeline
from pond.recipe import parse_recipe

RECIPE = """\
name: exp test
input: {{path: raw}}
seed: 0
steps:
  - holdout: {{n: 6}}
  - exact_dedup: {{}}
  - synthesize: {{generator: respond, n: 4, teacher: fake}}
teachers:
  fake: {{base_url: "{url}", model: fake, max_retries: 0}}
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, sharegpt_df):
    from tests.fixtures_teacher import FakeTeacher

    root = tmp_path_factory.mktemp("export")
    (root / "raw").mkdir()
    messages = sharegpt_df["messages"].head(40).to_list()
    rows = [{"messages": m, "label": i} for i, m in enumerate(messages)]
    rows += rows[:3]  # exact duplicates, rejected by exact_dedup
    rows += [{"text": "a plain document with no conversation", "label": 99}]
    rows += [{"prompt": "Name a colour.", "response": "Blue.", "system": "Be brief.", "label": 100}]
    with open(root / "raw" / "a.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        f.write("{broken line\n")
    fake = FakeTeacher().start()
    try:
        recipe = parse_recipe(RECIPE.format(url=fake.base_url), "r.yaml")
        run_pipeline(recipe, root / "run", root, train=False)
    finally:
        fake.stop()
    return root / "run"


def readback(path: Path) -> list[list[dict]]:
    kept, rejected = read_records(str(path))
    assert len(rejected) == 0, rejected["detail"].to_list()[:3]
    return [m for m in kept["messages"].to_list()]


def listed_ids(out: Path) -> set[str]:
    path = out / "problems.jsonl"
    return {json.loads(line)["id"] for line in path.read_text().splitlines()} if path.exists() else set()


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_back_to_the_same_rows(run_dir, fmt):
    result = export_run(run_dir, fmt)
    rows = "heldout" if fmt == "lm-eval" else "curated"
    assert result.out == layout.export_dir(run_dir, fmt, rows)
    source = pl.read_parquet(run_dir / (layout.HELDOUT if rows == "heldout" else layout.CURATED))
    skipped = listed_ids(result.out)
    expected = [m for i, m in zip(source["id"], source["messages"].to_list()) if i not in skipped]
    assert result.rows == len(expected) and result.problems == len(skipped)
    data = {"hf": result.out, "lm-eval": result.files[0]}.get(fmt, result.out / "data.jsonl")
    if fmt == "hf":  # a datasets folder holds every row, plain-text ones too (empty messages)
        assert not skipped
        kept, rejected = read_records(str(data))
        assert len(rejected) == 0 and kept["text"].to_list() == source["text"].to_list()
    assert readback(data) == expected and len(expected) > 0


def test_curated_set_has_synthetic_rows_and_the_synthetic_row_set_is_them(run_dir):
    curated = pl.read_parquet(run_dir / layout.CURATED)
    synthetic = curated.filter(pl.col("source").str.starts_with("synthetic:"))
    assert synthetic.height > 0
    result = export_run(run_dir, "openai", rows="synthetic")
    assert result.out == run_dir / "export" / "openai-synthetic"
    assert readback(result.out / "data.jsonl") == synthetic["messages"].to_list()


def test_rejected_and_a_steps_kept_set(run_dir):
    result = export_run(run_dir, "sharegpt", rows="rejected")
    problems = [json.loads(line) for line in (result.out / "problems.jsonl").read_text().splitlines()]
    ingest_rejected = pl.read_parquet(layout.step_dir(run_dir, layout.INGEST) / layout.REJECTED)
    # the broken JSON line has no conversation: listed, with its reason, not dropped
    assert {p["id"] for p in problems} >= set(ingest_rejected["id"])
    assert all(p["reason"].startswith("no_messages") for p in problems)
    dedup = pl.read_parquet(run_dir / "steps" / "02-exact_dedup" / layout.REJECTED)
    assert result.rows >= dedup.height > 0
    kept = export_run(run_dir, "alpaca", rows="exact_dedup")
    step_kept = pl.read_parquet(run_dir / "steps" / "02-exact_dedup" / layout.KEPT)
    assert kept.rows + kept.problems == step_kept.height
    with pytest.raises(ExportError, match=r"--rows 'nosuch' is not a row set or a step of this run \(known: "):
        export_run(run_dir, "alpaca", rows="nosuch")


@pytest.mark.parametrize("fmt", ["alpaca", "llama-factory", "lm-eval"])
def test_counts_agree_everywhere(run_dir, fmt):
    """A row that breaks the format's rules is left out of the data file and listed in problems.jsonl:
    the summary, .pond-export, the data file and problems.jsonl agree on the counts."""
    result = export_run(run_dir, fmt)
    data = result.files[0]
    written = len(data.read_text().splitlines())
    listed = len(listed_ids(result.out))
    assert (written, listed) == (result.rows, result.problems)
    marker = json.loads((result.out / ".pond-export").read_text())
    assert marker["written"] == written and marker["problems"] == listed
    assert marker["n_rows"] == written + listed == result.selected
    assert result.summary().startswith(f"exported {written} of {written + listed} rows to ")
    if fmt == "alpaca":  # ShareGPT's multi-turn rows cannot be alpaca rows
        assert listed > 0 and f"{listed} rows break alpaca's rules: left out of the data file" in result.summary()


def test_openai_rules_list_the_rows_that_break_them(tmp_path):
    ok = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    rows = [("ok", ok),
            ("late-system", [ok[1], ok[0], ok[2]]),
            ("empty-answer", [ok[1], {"role": "assistant", "content": "  "}]),
            ("no-answer", [ok[1]]),
            ("tool", [ok[1], {"role": "tool", "content": "x"}, ok[2]]),
            ("plain", [])]
    written, listed = write_rows(iter(rows), "openai", tmp_path / "data.jsonl", tmp_path / "problems.jsonl")
    assert (written, listed) == (1, 5)
    reasons = {p["id"]: p["reason"] for p in map(json.loads, (tmp_path / "problems.jsonl").read_text().splitlines())}
    assert reasons["late-system"].startswith("system_not_first: messages[1]")
    assert reasons["empty-answer"].startswith("empty_assistant_turn: messages[1]")
    assert reasons["no-answer"] == "no_assistant_turn"
    assert reasons["tool"].startswith("unknown_role: messages[1]")
    assert reasons["plain"].startswith("no_messages")
    assert json.loads((tmp_path / "data.jsonl").read_text()) == {"messages": ok}
    # the same rows for LLaMA-Factory: alternation after an optional system turn
    written, listed = write_rows(iter([("ok", ok), ("two-users", [ok[1], ok[1], ok[2]])]), "llama-factory",
                                 tmp_path / "lf.jsonl", tmp_path / "lf-problems.jsonl")
    assert (written, listed) == (1, 1)
    assert "not_alternating" in (tmp_path / "lf-problems.jsonl").read_text()


def test_hf_folder_loads_and_its_card_gives_lineage(run_dir):
    import datasets

    result = export_run(run_dir, "hf")
    loaded = datasets.load_from_disk(str(result.out))
    curated = pl.read_parquet(run_dir / layout.CURATED)
    assert loaded.num_rows == curated.height and loaded["id"] == curated["id"].to_list()
    assert set(curated.columns) <= set(loaded.column_names)
    card = (result.out / "README.md").read_text()
    manifest = json.loads((run_dir / layout.MANIFEST).read_text())
    assert manifest["recipe_hash"] in card
    for path, digest in manifest["inputs"].items():
        assert path in card and digest in card
    for step in layout.funnel(run_dir):
        assert f"| {step['step']} | {step['in']} | {step['out']} | {step['rejected']} |" in card
    assert "exact_duplicate_of" in card and "bad_json" in card
    front = yaml.safe_load(card.split("---")[1])
    assert front["pond"]["recipe_hash"] == manifest["recipe_hash"]


def test_axolotl_and_llama_factory_stanzas_follow_their_schemas(run_dir):
    import datasets

    ax = export_run(run_dir, "axolotl")
    config = yaml.safe_load((ax.out / "axolotl.yaml").read_text())
    entry = config["datasets"][0]
    assert entry["type"] == "chat_template" and entry["ds_type"] == "json"
    assert entry["message_property_mappings"] == {"role": "role", "content": "content"}
    assert entry["roles_to_train"] == ["assistant"]
    # Axolotl loads a local `ds_type: json` file through datasets' json builder
    loaded = datasets.load_dataset("json", data_files=entry["path"], split="train")
    first = loaded[0][entry["field_messages"]]
    assert {"role", "content"} <= set(first[0]) and any(m["role"] == "assistant" for m in first)
    lf = export_run(run_dir, "llama-factory")
    info = json.loads((lf.out / "dataset_info.json").read_text())
    (name, spec), = info.items()
    assert name == "pond_exp_test" and spec["formatting"] == "sharegpt"
    tags = spec["tags"]
    rows = datasets.load_dataset("json", data_files=str(lf.out / spec["file_name"]), split="train")
    for conv in rows[spec["columns"]["messages"]]:
        # LLaMA-Factory's sharegpt converter: optional system first, then user/assistant tags alternating
        turns = conv[1:] if conv[0][tags["role_tag"]] == tags["system_tag"] else conv
        assert [t[tags["role_tag"]] for t in turns] == [tags["user_tag"], tags["assistant_tag"]] * (len(turns) // 2)
        assert len(turns) % 2 == 0


def test_lm_eval_task_loads_in_lm_eval(run_dir):
    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    result = export_run(run_dir, "lm-eval")
    heldout = pl.read_parquet(run_dir / layout.HELDOUT)
    names = [p.stem for p in result.files if p.suffix == ".yaml"]
    assert names == ["pond_exp_test_heldout", "pond_exp_test_heldout_loglik"]
    tasks = TaskManager(include_path=str(result.out), include_defaults=False).load_task_or_group(names)
    docs = {}
    for name in names:
        task = tasks[name]
        docs[name] = list(task.test_docs())
        assert len(docs[name]) == result.rows == heldout.height - result.problems
        doc = docs[name][0]
        last = heldout["messages"][0].to_list()[-1]
        assert task.doc_to_target(doc) == last["content"]
        assert task.doc_to_text(doc) == doc["prompt"] and doc["prompt"]
    assert tasks[names[0]].OUTPUT_TYPE == "generate_until" and tasks[names[1]].OUTPUT_TYPE == "loglikelihood"


def test_cli_export_and_bad_input(run_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def pond(*args):
        return subprocess.run([sys.executable, "-m", "pond.cli", "export", *map(str, args)],
                              capture_output=True, text=True, env=env)

    res = pond(run_dir, "--to", "alpaca", "--out", tmp_path / "alp")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("exported ") and "left out of the data file and listed" in res.stdout  # multi-turn
    res = pond(run_dir, "--to", "csv")
    assert res.returncode == 2 and "unknown export format 'csv'" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    res = pond(run_dir, "--to", "openai", "--out", tmp_path / "mine")
    assert res.returncode == 2 and "is not a pond export" in res.stderr
    assert (tmp_path / "mine" / "notes.txt").exists()
    res = pond(tmp_path, "--to", "openai")
    assert res.returncode == 2 and "not a pond run directory" in res.stderr


def test_lm_eval_scores_a_model_on_the_exported_task(run_dir, tmp_path, tiny_llama_dir):
    """The harness itself runs both tasks end to end on a (tiny, random) local model."""
    pytest.importorskip("lm_eval")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    # short rows: the tiny model has 256 positions, and lm-eval refuses answers longer than that
    heldout = tmp_path / "short.jsonl"
    heldout.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "count to five", "response": "one two three four five"},
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "reverse cat"},
                      {"role": "assistant", "content": "tac"}]}]))
    result = export_run(run_dir, "lm-eval", out=tmp_path / "task", heldout=heldout)
    names = [p.stem for p in result.files if p.suffix == ".yaml"]
    scores = simple_evaluate(model="hf", model_args=f"pretrained={tiny_llama_dir},dtype=float32", tasks=names,
                             task_manager=TaskManager(include_path=str(result.out), include_defaults=False),
                             gen_kwargs="max_gen_toks=4", device="cpu", batch_size=1, apply_chat_template=True,
                             bootstrap_iters=0)["results"]
    assert scores[names[0]]["sample_len"] == 2 and scores[names[1]]["sample_len"] == 2
    assert 0 <= scores[names[0]]["chrf,none"] <= 100 and 0 <= scores[names[0]]["bleu,none"] <= 100
    assert scores[names[1]]["perplexity,none"] > 1


def test_lm_eval_on_a_run_without_a_held_out_set_says_what_to_do(tmp_path):
    from pond.runner import Runner

    (tmp_path / "a.jsonl").write_text(json.dumps({"prompt": "p?", "response": "r."}) + "\n")
    Runner(parse_recipe("name: n\ninput: {path: a.jsonl}\n", "r.yaml"), tmp_path / "run", tmp_path).curate()
    with pytest.raises(ExportError, match=r"heldout.parquet: not found \(the run has no holdout step; pass --heldout"):
        export_run(tmp_path / "run", "lm-eval")
    with pytest.raises(ExportError, match=r"no rows to export \(synthetic\)"):
        export_run(tmp_path / "run", "openai", rows="synthetic")
