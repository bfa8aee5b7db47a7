"""Arms of a quality-vs-quantity experiment: their training rows and their training budgets."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from curation.errors import ConfigError, DataNotFound
from curation.records import answer_text_expr, synthetic_source
from curation.step import recipe_path
from evaluation.config import CURATED_DPO, ArmConfig, ExperimentConfig
from evaluation.metrics import is_structured
from evaluation.scoring import read_any
from training.config import DPOOptions, TrainConfig
from training.data import IGNORE, tokenize_conversations


def remove_heldout(pool: pl.DataFrame, heldout: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """The pool without rows that are also held-out rows (same id or same text): no arm may train on them."""
    if heldout.height == 0:
        return pool, 0
    leak = pl.col("id").is_in(heldout["id"].implode())
    if "text" in pool.columns and "text" in heldout.columns:
        leak = leak | pl.col("text").is_in(heldout["text"].implode())
    kept = pool.filter(~leak)
    return kept, pool.height - kept.height


def remove_overlap(df: pl.DataFrame, evals: pl.DataFrame, ngram: int = 13) -> tuple[pl.DataFrame, int]:
    """`df` without rows sharing a word `ngram`-gram with an evaluation set (the reference answers, the
    benchmark prompts), by the `decontaminate` step's own n-grams (curation.decontaminate.ngram_table)."""
    from curation.decontaminate import ngram_table

    if df.height == 0 or evals.height == 0:
        return df, 0
    hit = ngram_table(df, ngram).join(ngram_table(evals, ngram).select("h").unique(), on="h")["row"].unique()
    kept = df.filter(~pl.int_range(pl.len(), dtype=pl.Int64).is_in(hit.implode()))
    return kept, df.height - kept.height


def varies_by_seed(arm: ArmConfig) -> bool:
    """random_n draws fresh rows for every seed, so its interval includes the luck of the draw."""
    return arm.data == "random_n"


def is_synthetic(df: pl.DataFrame) -> pl.Series:
    """Rows a generator wrote (source `synthetic:*`)."""
    if "source" not in df.columns:
        return pl.Series([False] * df.height, dtype=pl.Boolean)
    return synthetic_source(df["source"])


def arm_rows(arm: ArmConfig, pool: pl.DataFrame, curated: pl.DataFrame, *, seed: int | tuple[int, ...],
             base_dir: Path | None = None) -> pl.DataFrame:
    """The training rows of one arm (for random_n: of one seed's draw). `curated` is the curated set's
    real rows and `curated_plus_synthetic` all of it, so the two differ by the synthetic rows alone."""
    if arm.data == "curated":
        df = curated.filter(~is_synthetic(curated))
    elif arm.data == CURATED_DPO:
        df = curated.filter(pl.col("chosen").is_not_null()) if "chosen" in curated.columns else curated.clear()
        if df.height == 0:
            raise ConfigError(f"arm {arm.name!r} ({CURATED_DPO}) trains on the curated set's preference pairs, and "
                              f"none of its {curated.height} rows has one (a non-null `chosen`): the recipe's "
                              f"`preference_pairs` step made none (its stats.json says why: judge ties under "
                              f"min_margin, near-copies), or there is no such step (docs/preference-pairs.md)")
    elif arm.data == "curated_plus_synthetic":
        df = curated
    elif arm.data == "full":
        df = pool
    elif arm.data in ("random_n", "longest_n"):
        n = arm.n or curated.height
        if n > pool.height:
            raise ConfigError(f"arm {arm.name!r}: n={n} is larger than the pool ({pool.height} rows)")
        if arm.data == "random_n":
            rng = np.random.default_rng([*(seed if isinstance(seed, tuple) else (seed,)), 0x5EED])
            return pool[np.sort(rng.choice(pool.height, size=n, replace=False)).tolist()]
        # Longest answers first ("Long Is More"); ids break ties so the choice is deterministic.
        return (pool.with_columns(__len=answer_text_expr().str.len_chars())
                .sort(["__len", "id"], descending=[True, False]).head(n).drop("__len"))
    else:
        path = recipe_path(arm.data, base_dir)
        if not path.exists():
            raise DataNotFound(f"arm {arm.name!r}: data file {path} not found")
        df = read_any(path)
    if df.height == 0:
        raise ConfigError(f"arm {arm.name!r} ({arm.data}) has no rows")
    return df.head(arm.n) if arm.n is not None else df


def sft_source(config: ExperimentConfig) -> str:
    """The arm whose SFT adapter (per seed) a `curated+dpo` arm goes on training: the first `curated` arm."""
    return next(a.name for a in config.arms if a.data == "curated")


def dpo_config(arm: ArmConfig, train: TrainConfig) -> TrainConfig:
    """The training section of a `curated+dpo` arm's DPO stage: the experiment's `train` (SFT stage included,
    which it does not run: the curated arm's adapter is its start) with method dpo, DPO's options from the arm
    or else from `train.dpo`, the student loaded as the SFT arms load it."""
    if train.method not in ("qlora", "lora"):
        raise ConfigError(f"arm {arm.name!r} ({CURATED_DPO}) trains a LoRA adapter with DPO on the curated arm's; "
                          f"train.method {train.method} trains no adapter: use qlora or lora")
    options = arm.dpo or train.dpo
    if "base_method" in options.model_fields_set and options.base_method != train.method:
        raise ConfigError(f"arm {arm.name!r}: dpo.base_method {options.base_method} differs from the method the "
                          f"curated arm's SFT adapter was trained with ({train.method}); leave it out")
    dpo = DPOOptions(**(options.model_dump() | {"reference": "sft", "base_method": train.method}))
    return train.model_copy(update={"method": "dpo", "dpo": dpo})


def profile(df: pl.DataFrame, tokenizer=None, max_seq_len: int | None = None) -> dict:
    """What an arm's rows look like: size, answer length, share of structured answers."""
    answers = df.select(answer_text_expr().alias("a"))["a"].fill_null("").to_list()
    out = {"rows": df.height,
           "answer_chars_mean": float(np.mean([len(a) for a in answers])) if answers else 0.0,
           "structured_share": float(np.mean([is_structured(a) for a in answers])) if answers else 0.0}
    if tokenizer is not None and max_seq_len is not None:
        enc = tokenize_conversations(df, tokenizer, max_seq_len)
        answer = np.array([sum(t != IGNORE for t in r["labels"][1:]) for r in enc])
        total = np.array([len(r["input_ids"]) for r in enc])
        usable = answer > 0  # the rows training keeps
        out.update({"trainable_rows": int(usable.sum()),
                    "answer_tokens_per_row": float(answer[usable].mean()) if usable.any() else 0.0,
                    "tokens_per_row": float(total[usable].mean()) if usable.any() else 0.0})
    return out


def answer_tokens_per_step(prof: dict, train: TrainConfig) -> float:
    """Expected answer tokens in one optimizer step for an arm with this profile."""
    rows_per_step = train.batch_size * train.grad_accum
    if train.packing and prof["tokens_per_row"] > 0:
        # Packed sequences are (nearly) full, so a step holds max_seq_len tokens per sequence.
        return rows_per_step * train.max_seq_len * prof["answer_tokens_per_row"] / prof["tokens_per_row"]
    return rows_per_step * prof["answer_tokens_per_row"]


def plan_budget(config: ExperimentConfig, train: TrainConfig, profiles: dict[str, dict]) -> dict[str, dict]:
    """Per arm: the training settings the budget rule gives (max_steps/epochs) and why."""
    dpo_arms = {a.name: a for a in config.arms if a.data == CURATED_DPO}
    if dpo_arms:  # a curated+dpo arm's SFT stage is the curated arm's; its DPO stage's budget is its own
        plans = plan_budget(config.model_copy(update={"arms": [a for a in config.arms if a.name not in dpo_arms],
                                                      "token_reference": _token_reference(config, dpo_arms)}),
                            train, {k: v for k, v in profiles.items() if k not in dpo_arms})
        for name, arm in dpo_arms.items():
            dpo = dpo_config(arm, train).dpo
            plans[name] = {**plans[sft_source(config)], "sft_from": sft_source(config),
                           "dpo": {"max_steps": dpo.max_steps, "epochs": dpo.epochs, "beta": dpo.beta, "lr": dpo.lr,
                                   "pairs": profiles[name]["rows"]}}
        return {a.name: plans[a.name] for a in config.arms}
    steps = config.steps or train.max_steps
    if config.budget in ("equal_steps", "equal_tokens") and steps is None:
        raise ConfigError(f"budget {config.budget} needs a step count: set experiment.steps or train.max_steps")
    rows_per_step = train.batch_size * train.grad_accum
    plans: dict[str, dict] = {}
    if config.budget == "equal_epochs":
        for name, prof in profiles.items():
            rows = prof.get("trainable_rows", prof["rows"])
            plans[name] = {"max_steps": None, "epochs": train.epochs, "rows_per_step": rows_per_step,
                           "expected_steps": int(np.ceil(rows * train.epochs / rows_per_step))}
        return plans
    if config.budget == "equal_steps":
        return {name: {"max_steps": steps, "epochs": train.epochs, "expected_steps": steps,
                       "rows_per_step": rows_per_step} for name in profiles}
    reference = config.token_reference or config.arms[0].name
    target = steps * answer_tokens_per_step(profiles[reference], train)
    for name, prof in profiles.items():
        per_step = answer_tokens_per_step(prof, train)
        n = steps if name == reference else max(1, round(target / per_step)) if per_step > 0 else steps
        plans[name] = {"max_steps": n, "epochs": train.epochs, "expected_steps": n, "rows_per_step": rows_per_step,
                       "answer_token_budget": round(target)}
    return plans


def _token_reference(config: ExperimentConfig, dpo_arms: dict) -> str:
    """The equal_tokens reference arm among the SFT arms: a curated+dpo reference (named, or first) stands for
    the curated arm it goes on from."""
    name = config.token_reference or config.arms[0].name
    return sft_source(config) if name in dpo_arms else name
