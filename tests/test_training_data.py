"""Loss masks: only assistant tokens are learned, whatever the chat template looks like."""
from __future__ import annotations

import polars as pl
import pytest

from curation.records import MESSAGES
from training.data import IGNORE, assistant_spans, tokenize_conversations
from training.model import resolve_student

from tests.fixtures_models import build_tiny_tokenizer


def _frame(conversations: list[list[dict]], texts: list[str] | None = None) -> pl.DataFrame:
    texts = texts or [""] * len(conversations)
    return pl.DataFrame({"messages": conversations, "text": texts}, schema={"messages": MESSAGES, "text": pl.Utf8})


def _learned(tok, row: dict) -> str:
    return tok.decode([i for i, lab in zip(row["input_ids"], row["labels"]) if lab != IGNORE])


CONVO = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "what is the capital of france?"},
    {"role": "assistant", "content": "paris"},
    {"role": "user", "content": "count to three"},
    {"role": "assistant", "content": "one two three"},
]


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def test_only_assistant_turns_and_their_end_token_are_learned(tok):
    row = tokenize_conversations(_frame([CONVO]), tok, 512)[0]
    assert tok.decode(row["input_ids"]) == tok.apply_chat_template(CONVO, tokenize=False)
    assert _learned(tok, row) == "paris<|im_end|>one two three<|im_end|>"
    # the labels are the ids themselves where learned (no shift here: the trainer shifts)
    assert all(lab in (IGNORE, i) for i, lab in zip(row["input_ids"], row["labels"]))
    assert row["length"] == len(row["input_ids"])


def test_conversation_without_an_answer_has_nothing_to_learn(tok):
    row = tokenize_conversations(_frame([[{"role": "user", "content": "hello?"}]]), tok, 512)[0]
    assert row["input_ids"] and set(row["labels"]) == {IGNORE}


def test_plain_text_rows_are_a_plain_lm_target(tok):
    df = _frame([[], CONVO], texts=["the quick brown fox", "ignored: messages win"])
    plain, chat = tokenize_conversations(df, tok, 512)
    assert tok.decode(plain["input_ids"]) == "the quick brown fox<|im_end|>"
    assert plain["labels"] == plain["input_ids"]
    assert "ignored" not in tok.decode(chat["input_ids"])


def test_long_rows_keep_their_start(tok):
    row = tokenize_conversations(_frame([CONVO]), tok, 512)[0]
    cut = tokenize_conversations(_frame([CONVO]), tok, 20)[0]
    assert cut["input_ids"] == row["input_ids"][:20] and cut["labels"] == row["labels"][:20]
    assert cut["length"] == row["length"] > 20


def test_templates_that_rerender_history_fall_back_to_locating_the_turn(tok):
    # This template marks the final message differently, so the first answer's prefix rendering is
    # not a prefix of the whole conversation: that turn is located by its content instead. The last
    # turn's region is what the template writes for the assistant, marker included.
    tok = build_tiny_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] }}"
        "{% if loop.last and not add_generation_prompt %}{{ ' (final)' }}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    text, spans = assistant_spans(tok, CONVO)
    assert [text[s:e] for s, e in spans] == ["paris<|im_end|>", "one two three (final)<|im_end|>"]
    row = tokenize_conversations(_frame([CONVO]), tok, 512)[0]
    assert _learned(tok, row) == "paris<|im_end|>one two three (final)<|im_end|>"


def test_messages_without_a_chat_template_are_a_clear_error(tok):
    tok = build_tiny_tokenizer()
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        tokenize_conversations(_frame([CONVO]), tok, 512)


def test_smollm2_template_masks(tok):
    try:
        path = resolve_student("smollm2-135m-instruct")
    except FileNotFoundError:
        pytest.skip("SmolLM2 not converted (scripts/prepare_models.py)")
    from training.model import load_tokenizer

    smol = load_tokenizer(path)
    row = tokenize_conversations(_frame([CONVO]), smol, 512)[0]
    assert _learned(smol, row) == "paris<|im_end|>one two three<|im_end|>"
