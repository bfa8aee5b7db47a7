"""Evaluation: held-out metrics, LLM-as-judge win rates and quality-vs-quantity experiments."""
