"""gemma-3-270m as pond's student: a base model with Gemma's turn format added at conversion.

The template tests need no model (a tiny tokenizer with Gemma's special tokens); the real-tokenizer
test and the slow training test need `make gemma-model` and skip without it.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import polars as pl
import pytest

from curation.chat import assistant_spans, split_last_turn
from curation.records import MESSAGES
from training.data import IGNORE, tokenize_conversations
from tests.fixtures_models import build_tiny_tokenizer
from tests.test_training_data import CONVO

ROOT = Path(__file__).resolve().parents[1]


def _prepare_models():
    spec = importlib.util.spec_from_file_location("prepare_models", ROOT / "scripts" / "prepare_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


PM = _prepare_models()


def _frame(convs: list[list[dict]]) -> pl.DataFrame:
    n = len(convs)
    return pl.DataFrame({"id": [f"g{i}" for i in range(n)], "messages": convs, "text": [""] * n,
                         "source": ["test"] * n},
                        schema={"id": pl.Utf8, "messages": MESSAGES, "text": pl.Utf8, "source": pl.Utf8})


def _learned(tok, row: dict) -> str:
    return tok.decode([i for i, lab in zip(row["input_ids"], row["labels"]) if lab != IGNORE])


@pytest.fixture(scope="module")
def tiny_gemma_tok():
    """A tiny tokenizer with Gemma's special tokens and the conversion's template: no model needed."""
    tok = build_tiny_tokenizer()
    tok.add_special_tokens({"bos_token": "<bos>", "eos_token": PM.GEMMA_STOP_TOKENS[0],
                            "additional_special_tokens": ["<start_of_turn>", "<eos>"]})
    tok.chat_template = PM.GEMMA_CHAT_TEMPLATE
    return tok


def _render(tok, messages, gen=False) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


def test_template_is_gemmas_turn_format(tiny_gemma_tok):
    msgs = CONVO[1:]
    assert _render(tiny_gemma_tok, msgs) == (
        "<bos><start_of_turn>user\nwhat is the capital of france?<end_of_turn>\n"
        "<start_of_turn>model\nparis<end_of_turn>\n"
        "<start_of_turn>user\ncount to three<end_of_turn>\n"
        "<start_of_turn>model\none two three<end_of_turn>\n")
    assert _render(tiny_gemma_tok, msgs[:1], gen=True) == (
        "<bos><start_of_turn>user\nwhat is the capital of france?<end_of_turn>\n<start_of_turn>model\n")


def test_template_system_opens_the_first_user_turn_and_nothing_raises(tiny_gemma_tok):
    assert _render(tiny_gemma_tok, CONVO[:2]) == (
        "<bos><start_of_turn>user\nBe brief.\n\nwhat is the capital of france?<end_of_turn>\n")
    # no user turn after the system message: it is a user turn of its own, never inside the model's turn
    lone = [{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "ok"}]
    assert _render(tiny_gemma_tok, lone) == (
        "<bos><start_of_turn>user\nBe brief.<end_of_turn>\n<start_of_turn>model\nok<end_of_turn>\n")
    assert _render(tiny_gemma_tok, lone[:1], gen=True) == (
        "<bos><start_of_turn>user\nBe brief.<end_of_turn>\n<start_of_turn>model\n")
    # turns that do not alternate (real pools hold them) render rather than raise
    odd = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]
    assert _render(tiny_gemma_tok, odd).count("<start_of_turn>user\n") == 2


def test_assistant_spans_are_content_and_end_of_turn(tiny_gemma_tok):
    for convo in (CONVO, CONVO[1:], [{"role": "system", "content": "s"}, {"role": "assistant", "content": "hi"}]):
        full, spans = assistant_spans(tiny_gemma_tok, convo)
        answers = [m["content"] for m in convo if m["role"] == "assistant"]
        assert [full[s:e] for s, e in spans] == [a + "<end_of_turn>" for a in answers]
    prompt, header, answer = split_last_turn(tiny_gemma_tok, CONVO)
    assert header == "<start_of_turn>model\n" and answer == "one two three<end_of_turn>"
    assert prompt.endswith("count to three<end_of_turn>\n<start_of_turn>model\n")


def test_only_model_turns_are_learned_and_bos_comes_once(tiny_gemma_tok):
    row = tokenize_conversations(_frame([CONVO]), tiny_gemma_tok, 512)[0]
    assert tiny_gemma_tok.decode(row["input_ids"]) == _render(tiny_gemma_tok, CONVO)
    assert row["input_ids"][0] == tiny_gemma_tok.bos_token_id
    assert row["input_ids"].count(tiny_gemma_tok.bos_token_id) == 1
    assert _learned(tiny_gemma_tok, row) == "paris<end_of_turn>one two three<end_of_turn>"


# The real tokenizer: needs `make gemma-model`.

@pytest.fixture(scope="module")
def gemma_path() -> Path:
    from training.model import resolve_student

    try:
        return resolve_student(PM.GEMMA)
    except FileNotFoundError:
        pytest.skip(f"{PM.GEMMA} not converted: run `make gemma-model` (optional base student)")


def test_converted_gemma_tokenizer_masks_all_but_the_model_turns(gemma_path):
    from transformers import GenerationConfig

    from training.model import load_tokenizer

    tok = load_tokenizer(gemma_path)
    assert tok.chat_template == PM.GEMMA_CHAT_TEMPLATE
    assert tok.convert_tokens_to_ids(["<bos>", "<start_of_turn>", "<end_of_turn>"]) == [2, 105, 106]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token) == (2, 106, "<pad>")  # pad is not the eos
    assert {106, 1} <= set(GenerationConfig.from_pretrained(gemma_path).eos_token_id)

    row = tokenize_conversations(_frame([CONVO]), tok, 512)[0]
    ids, labels = row["input_ids"], row["labels"]
    assert ids[0] == 2 and ids.count(2) == 1
    assert ids.count(105) == 4 and ids.count(106) == 4  # every turn marker is one token
    assert _learned(tok, row) == "paris<end_of_turn>one two three<end_of_turn>"
    learned = [lab for lab in labels if lab != IGNORE]
    assert learned.count(106) == 2 and 105 not in learned and 2 not in learned
    # the "model\n" header before each answer is context, not target
    for j, i in enumerate(ids):
        if i == 105:
            assert labels[j + 1] == IGNORE and labels[j + 2] == IGNORE


@pytest.mark.slow
def test_gemma_trains_two_steps_and_saves_an_adapter(gemma_path, tmp_path):
    from training.config import TrainConfig
    from training.trainer import train

    convs = [[{"role": "user", "content": f"Say the word {w} twice."},
              {"role": "assistant", "content": f"{w} {w}"}] for w in ["cat", "dog", "fox", "owl"]]
    cfg = TrainConfig(student=str(gemma_path), max_steps=2, batch_size=2, max_seq_len=64, lr=1e-4,
                      lora_r=8, lora_alpha=16, save_steps=100, warmup_ratio=0.0)
    res = train(_frame(convs), cfg, tmp_path)
    assert res.steps == 2 and len(res.losses) == 2
    assert all(math.isfinite(x) for x in res.losses), res.losses
    assert (res.adapter_dir / "adapter_model.safetensors").is_file()
    assert (res.adapter_dir / "adapter_config.json").is_file()
