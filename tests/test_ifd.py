"""The ifd step on the tiny random Llama: values against a plain transformers computation, the last
assistant turn scored, rejections with reasons, the cache, bad scorers, and a recipe through the CLI."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import polars as pl
import pytest

from curation import ifd as ifd_mod
from curation.ifd import ABOVE_MAX, NO_ANSWER, TRUNCATED, IfdOptions, ifd
from curation.records import MESSAGES
from curation.step import StepContext

U1 = "what is the capital of france?"
A1 = "paris is the capital of france."
U2 = "count to five"
A2 = "one two three four five"
U3 = "reverse the word cat"
A3 = "tac"


def _turns(*pairs: str) -> list[dict]:
    roles = ["user", "assistant"] * len(pairs)
    return [{"role": r, "content": c} for r, c in zip(roles, pairs)]


def _frame(convs: list[list[dict]], ids: list[str] | None = None) -> pl.DataFrame:
    ids = ids or [f"r{i}" for i in range(len(convs))]
    return pl.DataFrame({"id": ids, "messages": convs, "text": ["" for _ in convs], "source": ["t"] * len(convs)},
                        schema={"id": pl.Utf8, "messages": MESSAGES, "text": pl.Utf8, "source": pl.Utf8})


def _run(df, model_dir, cache, **opts):
    ctx = StepContext(cache_dir=cache)
    kept, rejected = ifd(df, IfdOptions(model=str(model_dir), dtype="fp32", **opts), ctx)
    assert len(df) == len(kept) + len(rejected)
    assert sorted(kept["id"].to_list() + rejected["id"].to_list()) == sorted(df["id"].to_list())
    return kept, rejected, ctx.stats


def _reference_ifd(model_dir, conv: list[dict]) -> tuple[float, float]:
    """IFD written out by hand for the fixture's ChatML template, one row at a time, with
    transformers' own shifted loss: (ifd, answer_ppl) of the last assistant turn."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    last = max(i for i, m in enumerate(conv) if m["role"] == "assistant")
    prompt = tok.apply_chat_template(conv[:last], tokenize=False, add_generation_prompt=True)
    header = "<|im_start|>assistant\n"
    answer = conv[last]["content"] + "<|im_end|>"
    assert prompt.endswith(header)

    def loss(context: str) -> float:
        c = tok(context, add_special_tokens=False)["input_ids"]
        a = tok(answer, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([c + a])
        labels = torch.tensor([[-100] * len(c) + a])
        with torch.no_grad():
            return float(model(input_ids=ids, labels=labels).loss)

    with_prompt, alone = loss(prompt), loss(header)
    return with_prompt / alone, math.exp(with_prompt)


def test_matches_plain_transformers_and_scores_the_last_turn(tiny_llama_dir, tmp_path):
    multi = _turns(U1, A1, U2, A2, U3, A3)
    trailing_user = _turns(U2, A2) + [{"role": "user", "content": U3}]  # ends on a user turn: A2 is scored
    df = _frame([_turns(U1, A1), _turns(U2, A2), multi, trailing_user, _turns(U3, A3)])
    kept, rejected, stats = _run(df, tiny_llama_dir, tmp_path, batch_size=3)  # mixed lengths in a padded batch
    assert len(rejected) == 0 and kept.schema["ifd"] == pl.Float64 and kept.schema["answer_ppl"] == pl.Float64
    got = dict(zip(kept["id"], zip(kept["ifd"], kept["answer_ppl"])))
    for rid, conv in [("r0", _turns(U1, A1)), ("r1", _turns(U2, A2)), ("r2", multi)]:
        want_ifd, want_ppl = _reference_ifd(tiny_llama_dir, conv)
        assert got[rid][0] == pytest.approx(want_ifd, abs=1e-4)
        assert got[rid][1] == pytest.approx(want_ppl, rel=1e-4)
    # the multi-turn row is scored on its last answer with every earlier turn as the prompt: not on
    # the last pair alone (the earlier turns change it) and not on its first turn
    assert got["r2"][0] != pytest.approx(got["r4"][0], abs=1e-4)
    assert got["r2"][0] != pytest.approx(got["r0"][0], abs=1e-4)
    # a trailing user turn is not an answer: the last assistant turn (A2 after U2) is what is scored
    assert got["r3"][0] == pytest.approx(got["r1"][0], abs=1e-9)
    assert stats["ifd"]["count"] == 5 and stats["scored"] == 5
    assert stats["ifd"]["min"] <= stats["ifd"]["p50"] <= stats["ifd"]["max"]
    assert set(stats["answer_ppl"]) == {"count", "mean", "p5", "p25", "p50", "p75", "p95", "min", "max"}


def test_max_ifd_rejects_at_or_above(tiny_llama_dir, tmp_path):
    df = _frame([_turns(U1, A1), _turns(U2, A2), _turns(U3, A3), _turns(U1, A2), _turns(U2, A3)])
    scored, _, _ = _run(df, tiny_llama_dir, tmp_path)
    cut = sorted(scored["ifd"].to_list())[2]  # exactly the third value: that row is "at" the cut
    kept, rejected, stats = _run(df, tiny_llama_dir, tmp_path, max_ifd=cut)
    assert len(kept) == 2 and len(rejected) == 3
    assert kept["ifd"].max() < cut <= rejected["ifd"].min()
    assert set(rejected["reason"]) == {ABOVE_MAX} and set(rejected["stage"]) == {"ifd"}
    assert stats["above_max_ifd"] == 3 and stats["max_ifd"] == cut


def test_unscorable_rows_are_rejected_with_a_reason_never_nan(tiny_llama_dir, tmp_path):
    long_prompt = _turns(" ".join([U1] * 20), A1)
    df = _frame([_turns(U1, A1), [{"role": "user", "content": U2}], [],
                 _turns(U3, "   "), long_prompt])
    kept, rejected, stats = _run(df, tiny_llama_dir, tmp_path, max_seq_len=128)
    assert kept["id"].to_list() == ["r0"]
    reasons = dict(zip(rejected["id"], rejected["reason"]))
    assert reasons == {"r1": NO_ANSWER, "r2": NO_ANSWER, "r3": NO_ANSWER, "r4": TRUNCATED}
    assert reasons["r4"].startswith("ifd_unscorable: no answer tokens after truncation")
    for frame in (kept, rejected):
        assert frame["ifd"].is_nan().sum() == 0 and frame["answer_ppl"].is_nan().sum() == 0
    assert rejected["ifd"].null_count() == 4 and kept["ifd"].null_count() == 0
    assert stats["unscorable"] == {NO_ANSWER: 3, TRUNCATED: 1} and stats["scored"] == 1
    # with room for it, the long prompt's answer is scored
    kept, _, _ = _run(df, tiny_llama_dir, tmp_path, max_seq_len=256)
    assert "r4" in kept["id"].to_list()


def test_rerun_and_other_recipes_compute_nothing_again(tiny_llama_dir, tmp_path):
    df = _frame([_turns(U1, A1), _turns(U2, A2), _turns(U1, A1), _turns(U1, A2, U3, A3)])  # r2 repeats r0
    before = dict(ifd_mod.counters)
    first, _, stats = _run(df, tiny_llama_dir, tmp_path)
    assert ifd_mod.counters["forward_passes"] - before["forward_passes"] == 2 * 3  # identical rows once
    assert stats["computed"] == 3 and stats["from_cache"] == 0
    mid = dict(ifd_mod.counters)
    again, _, stats = _run(df, tiny_llama_dir, tmp_path)
    assert ifd_mod.counters == mid and stats["from_cache"] == 3 and stats["computed"] == 0
    assert again.equals(first)  # the same bytes from the cache as from the model
    # another recipe over some of the same rows plus a new one: only the new one is scored
    other, _, stats = _run(_frame([_turns(U2, A2), _turns(U3, A3)], ["x", "y"]), tiny_llama_dir, tmp_path)
    assert ifd_mod.counters["forward_passes"] - mid["forward_passes"] == 2 and stats["from_cache"] == 1
    assert other["ifd"][0] == first["ifd"][1]
    # what changes the numbers changes the key: another max_seq_len is computed afresh
    _, _, stats = _run(df, tiny_llama_dir, tmp_path, max_seq_len=128)
    assert stats["from_cache"] == 0 and stats["computed"] == 3


def test_a_scorer_that_is_not_a_causal_lm_is_one_clear_line(tmp_path):
    bert = tmp_path / "encoder"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    df = _frame([_turns(U1, A1)])
    with pytest.raises(ValueError, match=rf"^ifd: {bert} is not a causal language model .*BertModel"):
        ifd(df, IfdOptions(model=str(bert)), StepContext(cache_dir=tmp_path))
    try:
        from curation.embed import default_model_path

        minilm = default_model_path()
    except ImportError:
        return
    with pytest.raises(ValueError, match="is not a causal language model"):
        ifd(df, IfdOptions(model=str(minilm)), StepContext(cache_dir=tmp_path))


RECIPE = """\
name: ifd-run
input: {{path: raw.jsonl}}
steps:
  - exact_dedup: {{}}
  - ifd: {{model: {model}, dtype: fp32, max_ifd: 50.0}}
"""


@pytest.mark.slow  # ~17 s through the CLI; the step's scoring, rejections and rerun are tested above
def test_recipe_through_the_cli_estimate_then_run(tiny_llama_dir, tmp_path):
    convs = [_turns(u, a) for u in (U1, U2, U3) for a in (A1, A2, A3)] + [[{"role": "user", "content": U1}]]
    (tmp_path / "raw.jsonl").write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(model=tiny_llama_dir))
    env = {**__import__("os").environ, "POND_CACHE_DIR": str(tmp_path / "cache")}

    def cli(*args):
        res = subprocess.run([sys.executable, "-m", "pond.cli", "run", str(recipe), "--out", str(tmp_path / "run"),
                              *args], capture_output=True, text=True, cwd=tmp_path, env=env)
        assert res.returncode == 0, res.stderr
        return res.stdout

    ingested = 10
    out = cli("--estimate")
    assert f"02-ifd: 9 rows to score (18 forward passes of {tiny_llama_dir.name}-" in out
    assert "0 already cached, 1 without an answer" in out
    cli("--no-train")
    stats = json.loads((tmp_path / "run/steps/02-ifd/stats.json").read_text())
    assert stats["in"] == ingested == stats["out"] + stats["rejected"]
    assert stats["scored"] == 9 and stats["reasons"] == {"ifd_unscorable": 1}
    assert stats["ifd"]["count"] == 9 and stats["ifd"]["p5"] <= stats["ifd"]["p95"]
    kept = pl.read_parquet(tmp_path / "run/steps/02-ifd/kept.parquet")
    assert kept["ifd"].null_count() == 0 and len(kept) == 9
    assert (tmp_path / "cache" / "ifd").is_dir()
    out = cli("--estimate")
    assert "02-ifd: 0 rows to score (0 forward passes" in out and "9 already cached" in out


def test_batches_bound_sequences_and_padded_tokens():
    from curation.ifd import batches

    got = batches([10, 300, 50, 60, 1000, 55], batch_size=3, batch_tokens=200)
    assert got == [[4], [1], [3, 5, 2], [0]]  # longest first; 1000 and 300 exceed the budget alone
    assert sorted(i for b in got for i in b) == list(range(6))


def test_batches_do_not_pad_short_sequences_to_long_ones():
    from curation.ifd import PASS_TOKENS, batches

    got = batches([600, 7, 590, 9, 12, 8], batch_size=8, batch_tokens=4096)
    assert got == [[0, 2], [4, 3, 5, 1]]  # the budget holds all six, but 600 tokens of padding per short one cost more
    assert batches([100, 100 - PASS_TOKENS + 1], 8, 4096) == [[0, 1]]  # less padding than a pass costs: together


def test_batched_scoring_equals_one_row_at_a_time(tiny_llama_dir, tmp_path, monkeypatch):
    """Rows of different lengths (one turn, several, long answers, long prompts) in shared, padded forward
    passes give the losses each row gets alone, within 1e-4."""
    from curation.ifd import score_rows

    convs = [_turns(U1, A1), _turns(U2, A2), _turns(U1, A1, U2, A2, U3, A3), _turns(U3, " ".join([A1] * 8)),
             _turns(" ".join([U2] * 6), A3), _turns(U3, A3), _turns(U1, A2, U3, " ".join([A2] * 4))]
    passes = []
    batches = ifd_mod.batches
    monkeypatch.setattr(ifd_mod, "batches", lambda *a: passes.append(batches(*a)) or passes[-1])
    opts = {"model": str(tiny_llama_dir), "dtype": "fp32", "cache": False}
    together = score_rows(convs, IfdOptions(**opts, batch_size=64, batch_tokens=100_000), tmp_path)
    assert any(len(b) > 2 for b in passes[0]) and len(passes[0]) < 2 * len(convs)  # shared passes, mixed lengths
    one_by_one = [score_rows([c], IfdOptions(**opts, batch_size=1), tmp_path)[0] for c in convs]
    assert len({int(k) for _, _, k in together}) >= 4  # answers of different lengths
    for got, want in zip(together, one_by_one):
        assert got[2] == want[2]  # the same answer tokens
        assert got[:2] == pytest.approx(want[:2], abs=1e-4)
        assert got[0] / got[1] == pytest.approx(want[0] / want[1], abs=1e-4)  # ifd


def test_a_model_whose_logits_are_more_than_its_output_layer_is_scored_whole(tiny_llama_dir, tmp_path, monkeypatch):
    """Logits only at answer positions is used where they are exactly lm_head(hidden state); a model that
    scales or soft-caps them is detected and scored through its own forward, with the same result."""
    from curation.ifd import output_head, score_rows

    convs = [_turns(U1, A1), _turns(U2, A2, U3, A3)]
    opts = IfdOptions(model=str(tiny_llama_dir), dtype="fp32", cache=False)
    fast = score_rows(convs, opts, tmp_path)
    model, head = ifd_mod._load_model(str(tiny_llama_dir), "cpu", "fp32")
    assert head is model.get_output_embeddings()
    monkeypatch.setattr(ifd_mod, "_load_model", lambda *a: (model, None))
    full = score_rows(convs, opts, tmp_path)
    assert fast == pytest.approx(full, abs=1e-5)
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: type(out := forward(*a, **k))(logits=out.logits * 0.5))
    assert output_head(model) is None


def test_a_prompt_longer_than_max_seq_len_is_unscorable_even_with_a_long_answer(tiny_llama_dir, tmp_path):
    # the prompt alone overflows max_seq_len by a little, the answer is long: no answer token survives
    # truncation (a negative cut used to keep most of the answer and score an over-long sequence)
    df = _frame([_turns(" ".join([U1] * 20), " ".join([A1] * 30)), _turns(U1, A1)])
    kept, rejected, stats = _run(df, tiny_llama_dir, tmp_path, max_seq_len=120)
    assert kept["id"].to_list() == ["r1"]
    assert dict(zip(rejected["id"], rejected["reason"])) == {"r0": TRUNCATED}
