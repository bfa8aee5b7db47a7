"""`pond export --to dpo` (pond/export/dpo.py): a run's preference pairs as TRL reads them (loaded with
`datasets` and one batch through TRL's own preference tokenisation and collator, then its loss), the same
pairs in LLaMA-Factory's ShareGPT preference layout with both trainers' stanzas held to their documented
keys, the pair rules, and a run without pairs in one line.

The run is real: rows carrying the judge's `judge_score` and synthesize's `candidate_of` (as those steps
leave them) go through the `preference_pairs` step."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from pond import layout
from pond.export import ExportError, export_run
from pond.export.chat import PAIR_RULES, trl_pair_record, write_checked
from pond.pipeline import run_pipeline
from pond.recipe import parse_recipe

SYSTEM = {"role": "system", "content": "You are the support assistant of an online shop."}
CASES = [
    ("Where is my parcel?", [("Open Orders and follow the tracking link; it shows where the parcel is now.", 8),
                              ("No idea.", 2)]),
    ("Can I pay by invoice?", [("Yes: choose Invoice at checkout, and pay within 14 days.", 9), ("Maybe.", 3),
                               ("Invoices exist for business accounts.", 5)]),
    ("Do you ship to Norway?", [("Yes, in 3 to 5 working days; customs fees are shown at checkout.", 7),
                                ("We ship to Norway.", 6)]),  # margin 1 < min_margin 2: no pair
]


def _write_rows(path: Path) -> None:
    rows = [{"messages": [SYSTEM, {"role": "user", "content": q}, {"role": "assistant", "content": a}],
             "candidate_of": f"case-{i}", "judge_score": score}
            for i, (q, answers) in enumerate(CASES) for a, score in answers]
    rows.append({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pairs")
    _write_rows(root / "raw.jsonl")
    recipe = parse_recipe("name: pairs test\ninput: {path: raw.jsonl}\nsteps:\n  - preference_pairs: {min_margin: 2}\n",
                          "r.yaml")
    run_pipeline(recipe, root / "run", root, train=False)
    return root / "run"


def test_the_dpo_export_is_trls_preference_format(pair_run, tiny_llama_dir, tmp_path):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    result = export_run(pair_run, "dpo")
    curated = pl.read_parquet(pair_run / layout.CURATED)
    pairs = curated.filter(pl.col("chosen").is_not_null())
    assert (result.rows, result.problems, result.selected, result.unpaired) == (2, 0, 2, curated.height - 2)
    assert f"{curated.height - 2} rows without a preference pair are not part of a dpo export" in result.summary()
    loaded = datasets.load_dataset("json", data_files=str(result.out / "data.jsonl"), split="train")
    assert loaded.column_names == ["id", "prompt", "chosen", "rejected"]  # no `messages`: TRL refuses it beside them
    assert loaded["id"] == pairs["id"].to_list() and loaded["prompt"][0][0] == SYSTEM
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=2, bf16=False, use_cpu=True,
                     report_to="none", max_length=256)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype="float32"), args=args,
                         train_dataset=loaded, processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 4  # the two pairs' chosen, then their rejected sequences
    chosen_text = tokenizer.decode(batch["input_ids"][0][batch["completion_mask"][0].bool()])
    assert chosen_text.startswith(loaded["chosen"][0][0]["content"])
    assert trainer.compute_loss(trainer.model, batch).item() == pytest.approx(0.6931, abs=1e-3)  # log 2 at the start


def test_the_sharegpt_pairs_and_the_stanzas_follow_llama_factory_and_axolotl(pair_run):
    import datasets

    result = export_run(pair_run, "dpo")
    (name, spec), = json.loads((result.out / "dataset_info.json").read_text()).items()
    assert name == "pond_pairs_test" and spec["ranking"] is True and spec["formatting"] == "sharegpt"
    cols, tags = spec["columns"], spec["tags"]
    rows = datasets.load_dataset("json", data_files=str(result.out / spec["file_name"]), split="train")
    trl = [json.loads(line) for line in (result.out / "data.jsonl").read_text().splitlines()]
    for row, same in zip(rows, trl, strict=True):
        # LLaMA-Factory's sharegpt converter with ranking: optional system first, then human/gpt alternating,
        # an odd count (the prompt ends on the human turn); chosen and rejected one gpt message each
        turns = row[cols["messages"]]
        turns = turns[1:] if turns[0][tags["role_tag"]] == tags["system_tag"] else turns
        assert [t[tags["role_tag"]] for t in turns] == [tags["user_tag"], tags["assistant_tag"]] * (len(turns) // 2) \
            + [tags["user_tag"]]
        for side in ("chosen", "rejected"):
            answer = row[cols[side]]
            assert answer[tags["role_tag"]] == tags["assistant_tag"]
            assert answer[tags["content_tag"]] == same[side][0]["content"]
    config = yaml.safe_load((result.out / "axolotl.yaml").read_text())
    assert config["rl"] == "dpo" and config["sample_packing"] is False
    entry = config["datasets"][0]
    assert entry["type"] == "chat_template.default" and entry["ds_type"] == "json" and entry["path"].endswith(
        spec["file_name"])
    roles = {source: target for target, sources in entry["roles"].items() for source in sources}
    mapping = entry["message_property_mappings"]
    for row in rows:  # what Axolotl's chat_template.default reads of each row, by the stanza's names
        assert {roles[m[mapping["role"]]] for m in row[entry["field_messages"]]} <= {"system", "user"}
        for field in (entry["field_chosen"], entry["field_rejected"]):
            assert roles[row[field][mapping["role"]]] == "assistant" and row[field][mapping["content"]]
    assert "# rows: curated (2) from " in (result.out / "axolotl.yaml").read_text()


def test_pairs_that_break_the_rules_are_listed(tmp_path):
    user, answer = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}
    rows = [("ok", [SYSTEM, user, answer, {"role": "assistant", "content": "b"}]),
            ("no-prompt", [answer, answer]),
            ("prompt-ends-on-answer", [user, answer, answer, answer]),
            ("user-rejected", [user, answer, user]),
            ("empty-chosen", [user, {"role": "assistant", "content": " "}, answer]),
            ("late-system", [user, SYSTEM, user, answer, answer])]
    written, listed = write_checked(iter(rows), PAIR_RULES, trl_pair_record, tmp_path / "d.jsonl", tmp_path / "p.jsonl")
    assert (written, listed) == (1, 5)
    reasons = {p["id"]: p["reason"] for p in map(json.loads, (tmp_path / "p.jsonl").read_text().splitlines())}
    assert reasons["no-prompt"].startswith("no_pair")
    assert reasons["prompt-ends-on-answer"].startswith("not_alternating")
    assert reasons["user-rejected"] == "not_an_answer: the rejected side is a 'user' turn"
    assert reasons["empty-chosen"].startswith("empty_assistant_turn: messages[1]")
    assert reasons["late-system"].startswith("system_not_first")
    assert json.loads((tmp_path / "d.jsonl").read_text()) == {"id": "ok", "prompt": [SYSTEM, user], "chosen": [answer],
                                                             "rejected": [{"role": "assistant", "content": "b"}]}


def test_a_run_without_pairs_is_one_line_naming_the_step(pair_run, tmp_path):
    with pytest.raises(ExportError, match=r"none of the 5 rows \(rejected\) has a preference pair .* add a "
                                          r"`preference_pairs` step"):
        export_run(pair_run, "dpo", rows="rejected")  # the worse answers: no pair rides on them
    (tmp_path / "a.jsonl").write_text(json.dumps({"prompt": "p?", "response": "r."}) + "\n")
    run_pipeline(parse_recipe("name: n\ninput: {path: a.jsonl}\n", "r.yaml"), tmp_path / "run", tmp_path, train=False)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    res = subprocess.run([sys.executable, "-m", "pond.cli", "export", str(tmp_path / "run"), "--to", "dpo"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "none of the 1 rows (curated) has a preference pair" in res.stderr and "preference_pairs" in res.stderr
    assert not (tmp_path / "run" / "export").exists()  # nothing written, no folder left behind
