"""The edge cases no model writes (synthesis/edge_transforms.py): each transformation is seeded and
does what it says, the generator uses them without asking the writer for a prompt, answers the real
prompt, and drops answers with a fault; other_language is refused without a writer that translates."""
from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest

from curation.step import StepContext
from pond.recipe import RecipeError, parse_recipe
from synthesis.edge_kinds import DEFAULT_KINDS, TRANSLATED
from synthesis.edge_transforms import INJECTIONS, KEYBOARD_NEIGHBOURS, long_input, prompt_injection, typos
from synthesis.generators import SynthesizeOptions, synthesize
from synthesis.rows import row_prompt
from synthesis.teachers import Teachers

from tests.test_edge_cases import _is_writing, _last_user, ctx_for
from tests.test_generators import check_bookkeeping

PROSE = ("I have been trying to set up a small vegetable garden behind my house this spring. The soil is "
         "heavy clay and it stays wet for days after it rains, so most of my seedlings rotted last year. "
         "What should I add to the soil, and which vegetables cope best with clay? I would also like to "
         "know whether raised beds are worth the money for a beginner like me. ") * 4


def _levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def _hurried_only(text: str) -> str:
    """What typos() does besides the typos: lowercase, no apostrophes, no final full stop."""
    return re.sub(r"\.\s*$", "", text.lower().replace("'", ""))


# ------------------------------------------------------------------------------ typos


@pytest.mark.parametrize("rate", [0.03, 0.1])
def test_typos_change_about_the_set_rate_of_letters(rate):
    letters = sum(ch.lower() in KEYBOARD_NEIGHBOURS for ch in PROSE)
    out = typos(PROSE, np.random.default_rng(0), rate)
    edits = _levenshtein(_hurried_only(PROSE), out)
    # each typo is one edit (a neighbour key or a dropped letter); ~1,000 letters: sd of the count ~sqrt(n*rate)
    assert 0.7 * rate * letters <= edits <= 1.3 * rate * letters, (edits, rate * letters)
    assert out == out.lower() and "'" not in out


def test_typos_are_seeded_keep_code_and_always_change_something():
    prompt = "Why does this fail?\n```python\nprint('Hello World')\n```\nIt says SyntaxError."
    a, b = typos(prompt, np.random.default_rng(1)), typos(prompt, np.random.default_rng(1))
    assert a == b and a != typos(prompt, np.random.default_rng(2))
    assert "```python\nprint('Hello World')\n```" in a  # code is untouched, capitals and quotes too
    quoted = 'Replace "This is {object}" in my_var with the config value, then tell me what happens next please'
    for seed in range(10):  # quoted text and words that are not plain letters are typed as they are
        out = typos(quoted, np.random.default_rng(seed), 0.3)
        assert '"This is {object}"' in out and "my_var" in out
    # a prompt without a plain word outside code and quotes is no typos seed (the case would be the prompt)
    from synthesis.edge_transforms import applies

    assert not applies("typos", "我需要建立一個powerpoint") and not applies("typos", '```\nx = 1\n```')
    assert applies("typos", prompt) and applies("long_input", "我需要")
    short = "Hi there"
    assert all(typos(short, np.random.default_rng(s), 0.01) != _hurried_only(short) for s in range(20))
    # every changed letter is a keyboard neighbour or a drop: the same length or shorter, per word
    for word, typed in zip(PROSE.split()[:40], typos(PROSE, np.random.default_rng(3)).split()):
        assert len(typed) <= len(word)


# ------------------------------------------------------------------------------ long_input


def test_long_input_pastes_background_then_the_real_prompt():
    background = [f"Paragraph {k} talks about topic number {k} in some detail. It has a second sentence too, "
                  f"with a few more words about it.\n\nA second paragraph that is never pasted here." for k in range(12)]
    prompt = "How do I reverse a list in Python?"
    case = long_input(prompt, background, np.random.default_rng(0), words=60)
    assert case.endswith("\n" + prompt)  # the real question, whole, at the end
    pasted = case.split("\n\n")[1:-1]
    assert sum(len(p.split()) for p in pasted) >= 60
    assert all(any(p in b.split("\n\n")[0] for b in background) for p in pasted)  # first paragraphs, verbatim
    assert "never pasted" not in case
    assert case == long_input(prompt, background, np.random.default_rng(0), words=60)
    assert case != long_input(prompt, background, np.random.default_rng(1), words=60)
    listed = ["1. Install the package first and check the version it reports. 2. Run the setup script twice. 3."]
    assert long_input(prompt, listed, np.random.default_rng(0), words=10).split("\n\n")[1].endswith("twice.")
    with pytest.raises(ValueError, match="background"):
        long_input(prompt, ["too short"], np.random.default_rng(0))


# ------------------------------------------------------------------------------ prompt_injection


def test_prompt_injection_inserts_one_listed_line_into_the_real_prompt():
    prompt = "Plan a trip to Rome. I have three days. What should I see first?"
    places = set()
    for seed in range(30):
        case = prompt_injection(prompt, np.random.default_rng(seed))
        lines = [x for x in INJECTIONS if x in case]
        assert len(lines) == 1
        assert " ".join(case.replace(lines[0], "").split()) == prompt  # the real prompt, whole, in order
        places.add("start" if case.startswith(lines[0]) else "end" if case.endswith(lines[0]) else "middle")
        assert case == prompt_injection(prompt, np.random.default_rng(seed))
    assert places == {"start", "middle", "end"}


# ------------------------------------------------------------------------------ the generator


SOUND = "Sure. The short answer is that it depends on a few things, and here is how to decide between them."
SOUND_ZH = "好的。簡單地說，這取決於幾個因素，下面說明如何在它們之間做出選擇，並給出每一頁的標題建議。"


def _sound_answer(body: dict, i: int) -> str:
    """A complete answer in the prompt's language (ShareGPT's seeds include Chinese prompts)."""
    return SOUND_ZH if body and re.search(r"[\u4e00-\u9fff]", _last_user(body)) else SOUND


def test_transformed_kinds_ask_the_writer_for_no_prompt_and_answer_the_real_one(fake_teacher, short_chats, tmp_path):
    fake_teacher.reply = _sound_answer
    opts = SynthesizeOptions(n=6, kinds=["typos", "long_input", "prompt_injection"], long_input_words=40)
    ctx = ctx_for(fake_teacher.config(), tmp_path)
    kept, rejected = synthesize(short_chats, opts, ctx)
    new = check_bookkeeping(short_chats, kept, rejected, ctx, "edge_cases")
    assert not [b for b in fake_teacher.bodies if _is_writing(b)]  # no prompt written by a model
    assert len(fake_teacher.bodies) == 6 and len(new) == 6, rejected["reason"].to_list()
    assert all(v["calls"] == 0 and v["asked"] == 2 for v in ctx.stats["by_kind"].values())
    real = {r["id"]: row_prompt(r) for r in short_chats.to_dicts()}
    asked = [_last_user(b) for b in fake_teacher.bodies]
    for row in new.to_dicts():
        seed, case = real[row["seed_ids"][0]], row_prompt(row)
        assert seed in asked  # the answer was written to the real prompt
        if row["edge_kind"] != "typos":
            assert " ".join(seed.split()) in " ".join(case.split())  # kept whole inside the case
        assert case != seed
    assert len({ids[0] for ids in new["seed_ids"]}) == 6  # no two cases on one seed
    again, _ = synthesize(short_chats, opts, ctx_for(fake_teacher.config(), tmp_path / "again"))
    assert again["messages"].to_list() == kept["messages"].to_list()  # seeded


def test_answer_from_seed_takes_the_seed_rows_own_answer_and_calls_no_teacher(fake_teacher, short_chats, tmp_path):
    fake_teacher.reply = _sound_answer
    opts = SynthesizeOptions(n=6, kinds=["typos", "long_input", "prompt_injection"], long_input_words=40,
                             answer_from="seed")
    ctx = ctx_for(fake_teacher.config(), tmp_path)
    kept, rejected = synthesize(short_chats, opts, ctx)
    new = check_bookkeeping(short_chats, kept, rejected, ctx, "edge_cases")
    assert fake_teacher.bodies == []  # neither a prompt nor an answer from a model
    seeds = {r["id"]: r["messages"] for r in short_chats.to_dicts()}
    assert new.height + rejected.height >= 1 and new.height >= 1
    for row in new.to_dicts():
        seed = seeds[row["seed_ids"][0]]
        first = next(i for i, m in enumerate(seed) if m["role"] == "user")
        # the case's answer is the seed's answer to the very prompt the case transforms
        assert row["messages"][-1] == {"role": "assistant", "content": seed[first + 1]["content"].strip()}
        assert row["messages"][0]["content"] != seed[first]["content"]
    for reason in rejected["reason"].to_list():  # a seed answer with a fault is a rejection that says so
        assert reason.startswith(("answer stops partway", "answer repeats", "answer loops", "answer in another",
                                  "the seed row has no answer", "empty answer"))


def test_a_seed_answer_with_a_fault_is_rejected_with_its_reason(short_chats, tmp_path):
    cut = short_chats.with_columns(pl.col("messages").list.eval(
        pl.when(pl.element().struct.field("role") == "assistant")
        .then(pl.struct(pl.element().struct.field("role"), pl.lit("To get there, first you need to").alias("content")))
        .otherwise(pl.element())))
    opts = SynthesizeOptions(n=3, kinds=["typos"], answer_from="seed")
    assert opts.teacher_needed() is None  # no model needed: the run starts no teacher for this step
    assert SynthesizeOptions(n=3, kinds=["typos", "ambiguous"], answer_from="seed").teacher_needed() == "default"
    assert SynthesizeOptions(n=3, kinds=["typos"]).teacher_needed() == "default"
    ctx = StepContext(seed=0, run_dir=tmp_path, cache_dir=tmp_path / "cache", teachers=Teachers({}))  # none defined
    kept, rejected = synthesize(cut, opts, ctx)
    assert ctx.stats["new_rows"] == 0 and rejected.height == 3
    assert all(r.startswith("answer stops partway") for r in rejected["reason"].to_list())


def test_answers_with_a_fault_are_dropped_and_a_sound_candidate_kept(fake_teacher, short_chats, tmp_path):
    def reply(body, i):
        prompt = _last_user(body)
        return [prompt, "It depends on what you mean by"][i] if i < 2 else _sound_answer(body, i)

    fake_teacher.reply = reply
    opts = SynthesizeOptions(n=3, kinds=["prompt_injection"], answer_candidates=2)
    ctx = ctx_for(fake_teacher.config(), tmp_path / "a")
    _, rejected = synthesize(short_chats, opts, ctx)
    assert ctx.stats["new_rows"] == 0
    assert set(rejected["reason"]) == {"answer repeats the prompt"}  # the first candidate's fault
    ctx = ctx_for(fake_teacher.config(), tmp_path / "b")
    kept, _ = synthesize(short_chats, opts.model_copy(update={"answer_candidates": 3}), ctx)
    assert ctx.stats["new_rows"] == 3
    assert {m[-1]["content"] for m in kept["messages"].to_list()[-3:]} <= {SOUND, SOUND_ZH}


# ------------------------------------------------------------------------------ other_language


def test_other_language_needs_a_writer_that_translates():
    assert TRANSLATED not in DEFAULT_KINDS
    with pytest.raises(ValueError, match="needs a writer that really translates"):
        SynthesizeOptions(kinds=["typos", TRANSLATED])
    SynthesizeOptions(kinds=["typos", TRANSLATED], writer_translates=True)
    text = ("name: x\ninput: {path: data.jsonl}\nsteps:\n"
            "  - synthesize: {generator: edge_cases, kinds: [typos, other_language]}\n"
            "teachers: {default: {model: m, base_url: 'http://127.0.0.1:1/v1'}}\n")
    with pytest.raises(RecipeError) as err:
        parse_recipe(text, "r.yaml")
    assert "r.yaml:4" in str(err.value) and "writer_translates: true" in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_a_transformed_case_is_not_a_copy_of_its_own_seed_row_only():
    from synthesis.near_copies import reject_copies

    vectors = {"seed": np.array([1.0, 0.0]), "case": np.array([0.999, 0.045]), "other": np.array([0.0, 1.0])}

    def embed(texts):
        return np.array([vectors[t] / np.linalg.norm(vectors[t]) for t in texts], dtype=np.float32)

    assert reject_copies(["case"], ["n"], ["seed", "other"], ["s1", "s2"], 0.93, embed)[0].startswith("copies_seed")
    assert reject_copies(["case"], ["n"], ["seed", "other"], ["s1", "s2"], 0.93, embed, own_seed=["s1"]) == [None]
    # another seed row still counts
    assert reject_copies(["case"], ["n"], ["other", "seed"], ["s2", "s3"], 0.93, embed,
                         own_seed=["s2"])[0].startswith("copies_seed")


def test_the_quickstart_asks_no_model_for_its_edge_cases(fake_teacher, short_chats, tmp_path):
    """The demo's synthesize step, as the recipe says it (n scaled down): every case a transformation of a
    real prompt, answered by that prompt's own answer; the judge that follows wrote none of them."""
    from pathlib import Path

    from pond.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml")
    opts = next(s.options for s in recipe.steps if s.kind == "synthesize").model_copy(update={"n": 6})
    assert opts.teacher_needed() is None
    fake_teacher.reply = _sound_answer
    ctx = ctx_for(fake_teacher.config(), tmp_path)
    kept, rejected = synthesize(short_chats, opts, ctx)
    new = check_bookkeeping(short_chats, kept, rejected, ctx, "edge_cases")
    assert fake_teacher.bodies == [] and len(new) >= 1
    firsts = {r["id"]: r["messages"][1]["content"].strip() for r in short_chats.to_dicts()}
    assert all(m[-1]["content"] == firsts[ids[0]] for m, ids in zip(new["messages"], new["seed_ids"]))
    judge = next(s.options for s in recipe.steps if s.kind == "judge")
    assert judge.calibrate and not judge.self_judge and judge.teacher_needed() == "judge"
