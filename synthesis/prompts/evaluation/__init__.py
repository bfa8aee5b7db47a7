"""The evaluation judge's prompts ({question}, {answer_a}, {answer_b}, {answer}): evaluation.judge.load_prompt."""
