"""train_dpo(): DPO of the student on a run's preference pairs, with TRL's DPOTrainer and LoRA, resumably.

`train: {method: dpo}` trains on the rows that carry a preference pair (a non-null `chosen`, from the
`preference_pairs` step; docs/preference-pairs.md), their `prompt`, `chosen` and `rejected` as TRL reads
them, and nothing else of the row (TRL refuses `messages` beside the three):

- `dpo.reference: sft` (the default): training.trainer.train() first trains an SFT adapter on all the
  training rows into out_dir/sft/ (its own key, checkpoints and marker: it resumes on its own); DPO
  then goes on training that adapter, and TRL keeps a frozen copy of it as the reference;
- `dpo.reference: base`: DPO trains a new LoRA adapter on the student, the student (the adapter
  switched off) the reference.

out_dir gets what training.trainer.train() writes (train-key.json, checkpoints/, adapter/ with its card,
train-result.json, train.DONE), so evaluation, `pond serve` and the report read a DPO run as they read
an SFT one. What training.trainer decides is taken from it, never decided again: the student's checks,
the dtype rule, the LoRA config, the training arguments, the key and its claim, sealed checkpoints and
resume, the final save, the card and the finished marker. DPO's own parts: the pairs, the reference,
and TRL's DPOTrainer with pond's trainer pieces (training.callbacks.PondTrainerMixin).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import polars as pl
import torch
from trl import DPOTrainer

from curation.errors import ConfigError
from curation.store import file_digest
from training import distributed
from training import trainer as sft
from training.callbacks import PondTrainerMixin, ProgressCallback
from training.card import TrainResult
from training.checkpoints import CheckpointSealed
from training.config import TrainConfig
from training.model import resolve_dtype, set_threads

__all__ = ["PAIR", "train_dpo"]
PAIR = ("prompt", "chosen", "rejected")  # TRL's conversational preference keys, the only ones a pair row gives it
SFT_DIR = "sft"  # the SFT stage's folder inside out_dir (reference: sft)
REFERENCE_ADAPTER = "ref"  # the name TRL gives its frozen copy of a trained adapter
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass
class _Pairs:
    rows: list[dict]  # {prompt, chosen, rejected}, each a list of {role, content}
    hash: str  # of the rows as TRL gets them: the key's data_hash


class _DPOTrainer(PondTrainerMixin, DPOTrainer):
    """DPOTrainer with what pond adds to SFT (training.callbacks.PondTrainerMixin): token totals in every log
    entry, kept across resumes and summed over the ranks; a diverged loss as an error; adapters that a
    resume reloads kept in the dtype they trained in."""

    lower_what = "lower train.dpo.lr"

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:  # a batch is the chosen and the rejected sequences of its pairs
            self._count(int(inputs["attention_mask"].sum()), int(inputs["completion_mask"].sum()))
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)


# ---------------------------------------------------------------------------------- the parts


def _setup_pairs(df: pl.DataFrame) -> _Pairs:
    """The rows with a pair, as TRL's conversational preference examples; one line when there is none."""
    n = 0 if "chosen" not in df.columns else int(df["chosen"].is_not_null().sum())
    if n == 0:
        raise ConfigError(f"train: method dpo trains on preference pairs, and none of the {df.height} training rows "
                          f"has one (a non-null `chosen`): add a `preference_pairs` step before training "
                          f"(docs/preference-pairs.md), or train with method qlora or lora")
    rows = [{k: [{"role": m["role"], "content": m["content"]} for m in row[k]] for k in PAIR}
            for row in df.filter(pl.col("chosen").is_not_null()).select(PAIR).iter_rows(named=True)]
    digest = hashlib.blake2b(json.dumps(rows, sort_keys=True, ensure_ascii=False).encode(), digest_size=16)
    return _Pairs(rows, digest.hexdigest())


def _setup_reference(df: pl.DataFrame, config: TrainConfig, out_dir: Path, seed: int, **train_kw) -> Path | None:
    """The SFT adapter DPO starts from (reference: sft), trained on all the rows in out_dir/sft/ or found
    finished there; None for reference: base."""
    if config.dpo.reference == "base":
        return None
    return sft.train(df, config.as_sft(), out_dir / SFT_DIR, seed=seed, **train_kw).adapter_dir


def _setup_model(student: Path, config: TrainConfig, start: Path | None):
    """(model, tokenizer, peft_config): the student as its SFT stage loads it, with the SFT adapter to go on
    training (peft_config None), or bare with the LoRA config TRL puts on it."""
    model, tokenizer, lora = sft._setup_model(student, config.as_sft())
    if start is None:
        return model, tokenizer, lora
    from peft import PeftModel

    return PeftModel.from_pretrained(model, start, is_trainable=True), tokenizer, None


def _dpo_args(config: TrainConfig, out_dir: Path, seed: int, dtype: torch.dtype):
    """TRL's DPOConfig: every training argument as SFT sets it (training.trainer._sft_config), on the DPO
    stage's schedule, plus DPO's own. Only TrainingArguments' fields are carried over, so no SFT option
    (SFTConfig's loss_type, say) reaches DPO."""
    from transformers import TrainingArguments
    from trl import DPOConfig

    # random order: the Trainer's length grouping reads `input_ids`, which a tokenized pair does not have
    schedule = config.as_sft().model_copy(update={"lr": config.dpo.lr, "epochs": config.dpo.epochs,
                                                  "max_steps": config.dpo.max_steps, "group_by_length": False,
                                                  "packing": False})
    shared = sft._sft_config(schedule, out_dir, seed, dtype, has_eval=False).to_dict()
    names = {f.name for f in fields(TrainingArguments) if f.init}
    # to_dict() masks fields named *_token (hub credentials); pond sets none, so they keep their defaults
    kept = {k: v for k, v in shared.items() if k in names and not k.endswith("_token")}
    return DPOConfig(**kept, max_length=config.max_seq_len, beta=config.dpo.beta)


def _setup_trainer(model, tokenizer, lora, config: TrainConfig, out_dir: Path, seed: int, dtype: torch.dtype,
                   pairs: _Pairs, progress: Callable | None) -> _DPOTrainer:
    import datasets
    from transformers.trainer_callback import PrinterCallback

    callbacks = [CheckpointSealed()] + ([ProgressCallback(progress, "dpo")] if progress and distributed.is_main() else [])
    quiet = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # TRL's tokenizing bars; the step bar is `progress`
    trainer = _DPOTrainer(model=model, args=_dpo_args(config, out_dir, seed, dtype),
                          train_dataset=datasets.Dataset.from_list(pairs.rows), processing_class=tokenizer,
                          peft_config=lora, callbacks=callbacks)
    if not quiet:
        datasets.enable_progress_bars()
    trainer.remove_callback(PrinterCallback)  # the history goes to train-result.json
    trainer.keep_adapters_in(dtype)  # training.trainer's rule
    return trainer


def _trained_pairs(trainer: _DPOTrainer, pairs: _Pairs, max_seq_len: int) -> sft._Data:
    """What the card and train-result.json say of the data: the pairs TRL tokenized and kept (it drops a
    pair whose prompt alone fills max_length), how many it dropped, and how many it cuts."""
    ds = trainer.train_dataset
    if len(ds) == 0:
        raise ConfigError(f"none of the {len(pairs.rows)} preference pairs has room for an answer within max_seq_len="
                          f"{max_seq_len} tokens: their prompts alone fill it; raise train.max_seq_len")
    longest = [len(p) + max(len(c), len(r)) for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"])]
    return sft._Data(examples=list(ds), eval_examples=None, truncated=sum(n > max_seq_len for n in longest),
                     dropped=len(pairs.rows) - len(ds), hash=pairs.hash, eval_hash=None)


def _drop_reference_copy(model) -> None:
    """TRL's frozen copy of the SFT adapter is the reference, not part of the result: saved, it would be a
    second adapter inside adapter/."""
    if REFERENCE_ADAPTER in getattr(model, "peft_config", {}):
        model.delete_adapter(REFERENCE_ADAPTER)


# ---------------------------------------------------------------------------------- train_dpo


def train_dpo(df: pl.DataFrame, config: TrainConfig, out_dir: Path, *, seed: int = 0,
              eval_df: pl.DataFrame | None = None, cache_dir: Path | None = None,
              provenance: dict | None = None, progress: Callable | None = None,
              sft_adapter: Path | None = None) -> TrainResult:
    """DPO of `config.student` on the pair rows of `df` (module docstring), the adapter saved under `out_dir`;
    the same arguments as training.trainer.train(), which trains the SFT stage with `eval_df`. Called again
    with the same arguments it resumes, or returns the recorded result once train.DONE holds its key.

    `sft_adapter`: an SFT adapter trained elsewhere (the experiment's curated arm, loaded the way
    `dpo.base_method` says) to go on from instead of training the SFT stage here (reference: sft only)."""
    out_dir = Path(out_dir)
    pairs = _setup_pairs(df)  # before any training: a run without pairs fails in one line, not after SFT
    if sft_adapter is not None and config.dpo.reference != "sft":
        raise ConfigError(f"an SFT adapter to go on from ({sft_adapter}) needs train.dpo.reference sft, not "
                          f"{config.dpo.reference}")
    workers = distributed.processes_to_start(config.processes, config.batch_size)
    set_threads(config.threads)
    student = sft._setup_student(config, cache_dir, eval_df)
    # with `processes` > 1 the SFT stage starts (and ends) its own workers; under a launcher every rank trains it
    start = Path(sft_adapter) if sft_adapter is not None else _setup_reference(
        df, config, out_dir, seed, eval_df=eval_df, cache_dir=cache_dir, provenance=provenance, progress=progress)
    start_hash = start and file_digest(start / ADAPTER_WEIGHTS)
    key = sft._run_key(config, seed, student, pairs.hash, None) | {"sft_adapter_hash": start_hash}
    if distributed.is_main():
        sft._claim(out_dir, key)
    if (done := sft._finished(out_dir, key)) is not None:
        return done
    if workers > 1:  # each worker runs this function as one rank (finding the SFT stage finished); rank 0 writes
        distributed.launch(workers, train_dpo, (df, config, out_dir),
                           {"seed": seed, "eval_df": eval_df, "cache_dir": cache_dir, "provenance": provenance,
                            "sft_adapter": sft_adapter}, progress)
        return sft._recorded(out_dir, key)

    dtype = resolve_dtype(config.compute_dtype)
    model, tokenizer, lora = _setup_model(student, config, start)
    trainer = _setup_trainer(model, tokenizer, lora, config, out_dir, seed, dtype, pairs, progress)
    data = _trained_pairs(trainer, pairs, config.max_seq_len)
    history = sft._run(trainer, out_dir, has_eval=False)
    _drop_reference_copy(trainer.model)
    dpo = {"reference": config.dpo.reference, "sft_adapter": start and str(start), "sft_adapter_hash": start_hash,
           "pairs": len(pairs.rows), "beta": config.dpo.beta}
    run = sft._Run(config, student, data, seed, key, out_dir, {**(provenance or {}), "dpo": dpo})
    # rank 0 alone writes the adapter, its card, train-result.json and train.DONE; the others read them back
    result = sft._finish(run, trainer, tokenizer, None, history, dtype) if distributed.is_main() else None
    distributed.wait_for_everyone()
    return result or sft._recorded(out_dir, key)
