"""Answer faults: each detector fires on a crafted bad answer and not on its fixed twin; the
`answer_faults` step names each reason; clean math (GSM8K) and real code (the standard library)
pass both `heuristics` and `answer_faults`."""
from __future__ import annotations

import re

import polars as pl
import pytest

from curation import answer_faults as af
from curation.answer_faults_step import AnswerFaultsOptions, answer_faults
from curation.heuristics import HeuristicsOptions, heuristics
from curation.ingest import read_records, records_from_dicts
from curation.prose import PROSE_PATTERNS, prose, prose_expr
from curation.records import MESSAGES, render_text
from curation.step import StepContext
from tests.code_corpus import stdlib_code_rows
from tests.test_input_map import gsm8k_test_file

PROMPT = "How do I keep basil plants healthy on a windowsill through the winter months?"
ANSWER = ("Give basil as much light as you can: a south-facing window, or a small grow lamp for twelve hours a "
          "day. Water only when the top of the soil is dry, and pinch off flower buds so the plant keeps its leaves.")

# (bad answer, its fixed twin) per truncation kind
TRUNCATED = {
    "open code fence": ("Use this:\n```python\nfor i in range(3):\n    print(i)\n",
                        "Use this:\n```python\nfor i in range(3):\n    print(i)\n```"),
    "unfinished table row": ("| plant | light |\n| --- | --- |\n| basil | full sun |\n| mint | part",
                             "| plant | light |\n| --- | --- |\n| basil | full sun |\n| mint | part shade |"),
    "empty list item": ("The steps are:\n1. Water the soil.\n2. Pinch the buds.\n3.",
                        "The steps are:\n1. Water the soil.\n2. Pinch the buds.\n3. Turn the pot weekly."),
    "ends on a colon": ("Here are the three things basil needs:", "Basil needs light, warmth and dry soil."),
    "ends on 'the'": ("Basil wants as much light as it can get, so put it in the",
                      "Basil wants as much light as it can get, so put it in the sun."),
    "ends on a comma": ("Basil likes warmth, light and a pot that drains well,",
                        "Basil likes warmth, light and a pot that drains well."),
}


@pytest.mark.parametrize("kind", list(TRUNCATED))
def test_truncated_names_how_and_passes_the_finished_twin(kind):
    bad, fixed = TRUNCATED[kind]
    assert af.truncated(bad) == kind
    assert af.truncated(fixed) is None


def test_truncated_leaves_code_and_short_list_items_alone():
    assert af.truncated("def area(r):\n    return 3.14159 * r * r") is None  # fence-less code ends as it ends
    assert af.truncated("Shopping list:\n- basil\n- tomatoes\n- olive oil") is None
    assert af.truncated(ANSWER) is None and af.truncated("") is None


def test_repeats_prompt():
    assert af.repeats_prompt(PROMPT, PROMPT)
    assert af.repeats_prompt(PROMPT, "Sure! " + PROMPT)
    assert not af.repeats_prompt(PROMPT, ANSWER)
    assert af.repeats_prompt("Hi there", "hi there!") and not af.repeats_prompt("Hi there", "Hello!")
    # a task done on pasted text repeats the text, not the request: no echo
    pasted = "Once upon a time I had a talk with a friend of mine who were a master of mathematics and music."
    assert not af.repeats_prompt("Correct the grammar of this text:\n\n" + pasted, pasted.replace("were", "was"))
    # a function whose docstring restates the request is no echo: code is left out of the answer's side
    doc = "Return the area of a circle of radius r, using pi to five decimal places."
    assert not af.repeats_prompt(f"Write `area`: {doc}",
                                 f'def area(r):\n    """{doc}"""\n    return 3.14159 * r * r')


LONG_PROMPT = PROMPT + (" I water it every few days, but the lower leaves keep turning yellow and the stems look thin "
                        "and pale, so I wonder whether it needs more light, less water or a bigger pot.")
FRENCH = ("Donnez au basilic autant de lumière que possible : une fenêtre orientée au sud, ou une petite lampe de "
          "culture allumée douze heures par jour. Arrosez seulement quand la surface de la terre est sèche, et "
          "pincez les boutons de fleurs pour que la plante garde ses feuilles.")
RUSSIAN = "Поставьте базилик на самое светлое окно и поливайте, только когда земля сверху высохла."


def test_language_mismatch():
    assert af.language_mismatch(PROMPT, RUSSIAN) == ("en", "ru")
    assert af.language_mismatch(PROMPT, ANSWER) is None
    # within one script langid is not trusted (English requests over pasted French text, short English read as Finnish)
    assert af.language_mismatch(LONG_PROMPT, FRENCH) is None
    assert af.language_mismatch(PROMPT + " Answer in Russian, please.", RUSSIAN) is None  # asked for
    assert af.language_mismatch("Translate into Russian: " + PROMPT, RUSSIAN) is None  # asked for
    assert af.language_mismatch("ok", RUSSIAN) is None  # too short to tell
    assert af.language_mismatch(PROMPT, RUSSIAN) == af.language_mismatch(PROMPT, RUSSIAN)  # deterministic


def test_refusal_empty_and_degenerate_repetition():
    assert af.refusal("I'm sorry, but I cannot help with that request.")
    assert af.refusal(ANSWER + " As an AI language model, I have no garden.")
    assert not af.refusal(ANSWER)
    assert af.empty(" \n\u200b ") and not af.empty(ANSWER)
    assert af.degenerate_repetition("to_mot_and_tool_bar_wins_power_mc_wins_wins_wins_wins_wins")
    assert af.degenerate_repetition("Water it. " + "I love basil so much " * 6)
    assert not af.degenerate_repetition(ANSWER)
    assert not af.degenerate_repetition("row 1, row 2, row 3, row 4, row 5, row 6")  # numbers differ


MID_CONVERSATION = {  # a first message that points back to turns the row does not hold -> the words found
    "continue": "continue",
    "please continue.": "please continue.",
    "Perfect !": "Perfect !",
    "What about now? Here is the new list:\n1. apples": "What about now",
    "so should I start?": "so ",
    "Remove 3 and 4 as they only mention one person.": "Remove 3",
    "Now revisit your five points with the extra information below.": "your five points",
    "Rewrite the following script in C++": "the following script in C++",
    "The code runs with the latest commands you gave me, but the loss is NaN.": "you gave me",
}
STANDALONE = [
    "Explain quantum computing in simple terms",
    "Suggest thesis topics on the following: sustainable development goals in urban planning",
    "Summarise this text in three bullet points: the council met on Monday and agreed the budget.",
    "Continue this story for two paragraphs: The door opened, and a cat walked in.",
    "Here is an essay a friend wrote.\n\n" + "Words of the essay. " * 20 + "As you said before, it is long.\n\n"
    "Is the argument sound?",  # a back-reference deep inside pasted text is the text's own
    "hi",
    "What is the difference between so and such in English?",
    "Two groups are equal and the last one is 10 less than each of the others. How many are in it?",  # GSM8K
]


@pytest.mark.parametrize("first, words", list(MID_CONVERSATION.items()))
def test_a_first_message_from_the_middle_of_a_chat_is_found(first, words):
    assert af.starts_mid_conversation([{"role": "user", "content": first}, {"role": "assistant", "content": "x"}]) \
        == words.strip()


@pytest.mark.parametrize("first", STANDALONE)
def test_a_first_message_that_stands_alone_is_not(first):
    assert af.starts_mid_conversation([{"role": "user", "content": first}, {"role": "assistant", "content": "x"}]) \
        is None
    # a follow-up later in the conversation has its context
    assert af.starts_mid_conversation([{"role": "user", "content": first}, {"role": "assistant", "content": "x"},
                                       {"role": "user", "content": "continue"}]) is None


def test_a_service_error_saved_as_an_answer_is_boilerplate():
    assert re.search(af.any_of(af.BOILERPLATE_PATTERNS), "Too many requests in 1 hour. Try again later.")
    assert re.search(af.any_of(af.BOILERPLATE_PATTERNS), "network error")
    assert not re.search(af.any_of(af.BOILERPLATE_PATTERNS), "A network error can drop packets; retry with backoff.")


def test_ends_with_user():
    assert af.ends_with_user([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                              {"role": "user", "content": "c"}])
    assert not af.ends_with_user([{"role": "system", "content": "s"}, {"role": "user", "content": "a"},
                                  {"role": "assistant", "content": "b"}])


# --- the step -------------------------------------------------------------------------------------------

def conv(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in turns]


STEP_CASES = {  # reason -> (bad row, fixed twin)
    "last_turn_user": (conv(("user", PROMPT), ("assistant", ANSWER), ("user", "And in summer?")),
                       conv(("user", PROMPT), ("assistant", ANSWER))),
    "mid_conversation": (conv(("user", "Remove 3 and 4, they say the same."), ("assistant", ANSWER)),
                         conv(("user", PROMPT), ("assistant", ANSWER))),
    "truncated": (conv(("user", PROMPT), ("assistant", TRUNCATED["ends on 'the'"][0])),
                  conv(("user", PROMPT), ("assistant", TRUNCATED["ends on 'the'"][1]))),
    "repeats_prompt": (conv(("user", PROMPT), ("assistant", PROMPT)), conv(("user", PROMPT), ("assistant", ANSWER))),
    "language_mismatch": (conv(("user", PROMPT), ("assistant", RUSSIAN)), conv(("user", PROMPT), ("assistant", ANSWER))),
}


def frame(rows: list[list[dict]]) -> pl.DataFrame:
    return pl.DataFrame({"id": [f"r{i}" for i in range(len(rows))], "messages": rows,
                         "text": [render_text(r) for r in rows], "source": "test"},
                        schema_overrides={"messages": MESSAGES})


@pytest.mark.parametrize("reason", list(STEP_CASES))
def test_step_rejects_each_fault_with_its_reason_and_keeps_the_twin(reason):
    bad, fixed = STEP_CASES[reason]
    df = frame([bad, fixed])
    ctx = StepContext()
    kept, rejected = answer_faults(df, AnswerFaultsOptions(), ctx)
    assert len(kept) + len(rejected) == 2 and kept.columns == df.columns
    assert rejected["id"].to_list() == ["r0"] and rejected["reason"].to_list() == [reason]
    assert rejected["stage"].to_list() == ["answer_faults"] and ctx.stats["by_reason"] == {reason: 1}


def test_step_details_switches_and_plain_rows():
    df = frame([STEP_CASES["truncated"][0], STEP_CASES["language_mismatch"][0]])
    _, rejected = answer_faults(df, AnswerFaultsOptions(), StepContext())
    assert rejected["detail"].to_list() == ["ends on 'the'", "en -> ru"]  # how it stops; which languages
    kept, _ = answer_faults(df, AnswerFaultsOptions(truncated=False, language_mismatch=False), StepContext())
    assert len(kept) == 2
    plain = pl.DataFrame({"id": ["p"], "messages": [[]], "text": ["Some plain text that stops with the"],
                          "source": "t"}, schema_overrides={"messages": MESSAGES})
    assert len(answer_faults(plain, AnswerFaultsOptions(), StepContext())[0]) == 1


# --- math and code pass ----------------------------------------------------------------------------------

QUICKSTART = HeuristicsOptions(min_words=3, max_words=4000)
AT_MOST = 0.02  # the goal: at most 2% of a clean math or code set rejected


def rejected_share(df: pl.DataFrame, step, opts) -> float:
    kept, rejected = step(df, opts, StepContext())
    assert len(kept) + len(rejected) == len(df)
    return len(rejected) / len(df)


def test_gsm8k_test_split_passes_heuristics_and_answer_faults():
    df, _ = read_records(str(gsm8k_test_file()), columns={"prompt": "question", "response": "answer"})
    assert len(df) == 1319
    assert rejected_share(df, heuristics, QUICKSTART) <= AT_MOST
    assert rejected_share(df.head(300), answer_faults, AnswerFaultsOptions()) <= AT_MOST
    # as Gopher wrote them, the web-text rules reject about half of it (`#### 18`, `<<16-3-4=9>>`)
    assert rejected_share(df, heuristics, HeuristicsOptions(min_words=3, max_words=4000, prose_only=False)) > 0.4


@pytest.mark.parametrize("fenced", [False, True])
def test_standard_library_code_passes(fenced):
    df = records_from_dicts(stdlib_code_rows(limit=300, modules=CODE_MODULES, fenced=fenced), source="stdlib")
    assert len(df) >= 150
    assert rejected_share(df, heuristics, QUICKSTART) <= AT_MOST
    assert rejected_share(df, answer_faults, AnswerFaultsOptions()) <= AT_MOST


CODE_MODULES = ("statistics", "fractions", "textwrap", "shlex", "heapq", "bisect", "csv", "difflib", "string",
                "calendar", "ipaddress", "pprint", "argparse", "json/decoder", "json/encoder")


def test_prose_is_the_same_in_python_and_polars():
    texts = ["Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n#### 18",
             "Run it:\n```bash\nls -la # list\n```\nThen `cd ~` and see https://example.com/a?b=1 ok.",
             "| a | b |\n| --- | --- |\n| 1 | two words |\n## Title\n    indented code(1)\n  - a nested item",
             "The area is $\\pi r^2$ and \\[x^2\\] here; cost $5 and $10.\nif x > 1:\nplain words stay"]
    assert len(PROSE_PATTERNS) > 5
    polars_side = pl.select(prose_expr(pl.Series(texts))).to_series().to_list()
    assert polars_side == [prose(t) for t in texts]
    assert "<<" not in prose(texts[0]) and "=" not in prose(texts[0]) and "#" not in prose(texts[0])
    assert "two words" in prose(texts[2]) and "Title" in prose(texts[2]) and "nested item" in prose(texts[2])
    assert "$5 and $10" in prose(texts[3]) and "plain words stay" in prose(texts[3])
