"""train(): fine-tune the student on canonical records with TRL's SFTTrainer, resumably.

    out_dir/
      train-key.json     the run's identity (config, seed, student, data hash); another run here is an error
      checkpoints/       checkpoint-N/ every `save_steps` (adapter, optimizer, scheduler, each rank's RNG state)
      best/              the lowest held-out-loss adapter (with early stopping)
      adapter/           the final adapter (PeftModel.from_pretrained) + README.md card
      model/             instead of adapter/ for method `full`: the whole fine-tuned model + card
      merged/            base + adapter merged (with `merge`)
      train-result.json  TrainResult and the full log history
      train.DONE         curation.store's marker, keyed by train-key.json; written last: present = finished
                         (named, since the folder may hold other work: a pond run's holds its evaluation)

Calling train() again with the same arguments resumes from the last sealed checkpoint (same seed,
same data order, RNG states restored: the final adapter matches an uninterrupted run; a checkpoint
cut off inside its save has no seal and is set aside: training.checkpoints); once train.DONE holds
this run's key it returns the recorded result without training.

In several processes (training.distributed: a launcher, or `processes`) every rank trains and
writes its RNG state into each checkpoint; rank 0 alone writes everything else listed above.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from curation.errors import ConfigError
from curation.settings import hardware, quiet_model_loading
from curation import store
from training import distributed
from training.callbacks import CountingSFTTrainer, EarlyStopping, ProgressCallback
from training.card import TrainResult, write_card
from training.checkpoints import CheckpointSealed, last_sealed
from training.config import TrainConfig
from training.data import IGNORE, tokenize_conversations
from training.model import (check_targets, device, load_student, load_tokenizer, max_positions, resolve_dtype,
                            resolve_student, set_threads)

__all__ = ["TrainResult", "train", "resolve_student", "load_student", "tokenize_conversations"]
log = logging.getLogger(__name__)
# the files train() writes into the folder it is handed
RESULT = "train-result.json"
KEY = "train-key.json"
DONE = "train.DONE"


def _examples(df: pl.DataFrame, tokenizer, max_seq_len: int, what: str) -> tuple[list[dict], int, int]:
    """Tokenized rows with at least one assistant token, plus (truncated, dropped) counts."""
    if df.height == 0:
        raise ConfigError(f"the {what} set is empty: nothing to train on" if what == "training"
                          else f"the {what} set is empty")
    rows = tokenize_conversations(df, tokenizer, max_seq_len)
    kept = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows
            if any(x != IGNORE for x in r["labels"][1:])]
    truncated = sum(r["length"] > max_seq_len for r in rows)
    if not kept:
        raise ConfigError(f"none of the {df.height} {what} rows has an assistant answer within max_seq_len="
                          f"{max_seq_len} tokens (conversations need an assistant turn; plain rows a text)")
    return kept, truncated, len(rows) - len(kept)


def _hash_examples(examples: list[dict]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for ex in examples:
        h.update(np.asarray(ex["input_ids"], dtype=np.int64).tobytes())
        h.update(np.asarray(ex["labels"], dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()


def _sft_config(config: TrainConfig, out_dir: Path, seed: int, dtype: torch.dtype, has_eval: bool):
    from trl import SFTConfig

    # batch_size is the global micro-batch, split over the ranks: the same recipe learns the same
    # thing on any number of processes (tests/test_ddp.py holds the loss curves to it).
    per_rank = config.batch_size // distributed.world_size()
    eval_kw: dict = {"eval_strategy": "no"}
    if has_eval:
        eval_kw = {"eval_strategy": "steps" if config.eval_steps else "epoch",
                   "per_device_eval_batch_size": per_rank, "eval_packing": False,
                   "eval_on_start": config.eval_on_start}
        if config.eval_steps:
            eval_kw["eval_steps"] = config.eval_steps
    return SFTConfig(
        output_dir=str(out_dir / "checkpoints"),
        per_device_train_batch_size=per_rank,
        gradient_accumulation_steps=config.grad_accum,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        learning_rate=config.lr,
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        seed=seed,
        data_seed=seed,
        bf16=dtype == torch.bfloat16,
        fp16=False,
        use_cpu=device().type == "cpu",
        activation_checkpointing=config.gradient_checkpointing,
        max_length=config.max_seq_len,
        packing=config.packing,
        train_sampling_strategy="group_by_length" if config.group_by_length and not config.packing else "random",
        logging_steps=1,
        logging_nan_inf_filter=False,  # a diverged run is an error (CountingSFTTrainer.log), not a hidden NaN
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        ddp_backend="gloo" if device().type == "cpu" and distributed.launched() else None,
        ddp_find_unused_parameters=False,  # every trainable weight gets a gradient: skip DDP's search for unused ones
        **eval_kw,
    )


# Options that change how a run is executed or saved, not what it learns: free to change on resume.
# `processes` too: batch_size is global, so N processes learn what one does (within rounding; dropout
# masks differ per rank), and a run cut off on N processes may resume on another number.
_NOT_IN_KEY = {"threads", "save_steps", "save_total_limit", "merge", "processes"}


def _run_key(config: TrainConfig, seed: int, student: Path, data_hash: str, eval_hash: str | None) -> dict:
    return {"config": config.model_dump(mode="json", exclude=_NOT_IN_KEY), "seed": seed, "student": str(student),
            "data_hash": data_hash, "eval_hash": eval_hash}


def _read_json(path: Path) -> dict | None:
    """A JSON file pond wrote, or None if absent or unreadable (a write cut short by a kill: it is
    written again)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        if path.exists():
            log.warning("%s is unreadable (a write cut short?): written again", path)
        return None


def _claim(out_dir: Path, key: dict) -> None:
    path = out_dir / KEY
    old = _read_json(path)
    if old is not None:
        if old != key:
            diff = sorted(k for k in key if old.get(k) != key[k])
            raise ConfigError(f"{out_dir} holds a training run with different settings ({', '.join(diff)} differ); "
                              f"use another output folder or delete it")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    store.write_json(key, path, indent=2, sort_keys=True)


def _sort_adapter_config(path: Path) -> None:
    """peft writes `target_modules` from a set, in an order that changes with each process's hash
    seed; sorted, the same training gives the same adapter bytes."""
    if not path.exists():
        return
    config = json.loads(path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _merge(student: Path, adapter_dir: Path, out: Path, dtype: torch.dtype) -> Path:
    """Merge into the unquantised base (merging into 4-bit weights would round the update away)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    quiet_model_loading()
    base = AutoModelForCausalLM.from_pretrained(student, dtype=dtype)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    load_tokenizer(student).save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


@dataclass
class _Data:
    """The tokenized training rows (and held-out rows, when given), with what the key and the card record."""

    examples: list[dict]
    eval_examples: list[dict] | None
    truncated: int
    dropped: int
    hash: str
    eval_hash: str | None


@dataclass
class _Run:
    """One training's identity and where its files go: what rank 0 needs to finish it."""

    config: TrainConfig
    student: Path
    data: _Data
    seed: int
    key: dict
    out_dir: Path
    provenance: dict


def _setup_student(config: TrainConfig, cache_dir: Path | None, eval_df: pl.DataFrame | None) -> Path:
    """The student's folder, after the checks that need no data: the sequence fits its positions, and early
    stopping has a held-out set."""
    student = resolve_student(config.student, cache_dir)
    positions = max_positions(student)
    if positions is not None and config.max_seq_len > positions:
        raise ConfigError(f"max_seq_len={config.max_seq_len} is longer than the student's maximum positions "
                          f"({positions}, max_position_embeddings of {student})")
    if config.early_stopping_patience and eval_df is None:
        raise ConfigError("early_stopping_patience needs a held-out set (eval_df)")
    return student


def _setup_data(df: pl.DataFrame, eval_df: pl.DataFrame | None, student: Path, config: TrainConfig) -> _Data:
    tokenizer = load_tokenizer(student)
    examples, truncated, dropped = _examples(df, tokenizer, config.max_seq_len, "training")
    eval_examples = _examples(eval_df, tokenizer, config.max_seq_len, "held-out")[0] if eval_df is not None else None
    return _Data(examples, eval_examples, truncated, dropped, _hash_examples(examples),
                 eval_examples and _hash_examples(eval_examples))


def _setup_model(student: Path, config: TrainConfig):
    """(model, tokenizer, peft_config): the student loaded for training; peft_config None for method `full`."""
    from peft import LoraConfig

    model, tokenizer = load_student(student, config.method, config.compute_dtype, for_training=True)
    if config.method == "full":
        model.requires_grad_(True)
        return model, tokenizer, None
    check_targets(model, config.target_modules)
    peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                             target_modules=config.target_modules, bias="none", task_type="CAUSAL_LM")
    return model, tokenizer, peft_config


def _setup_trainer(model, tokenizer, peft_config, config: TrainConfig, out_dir: Path, seed: int, dtype: torch.dtype,
                   data: _Data, progress: Callable | None) -> tuple[CountingSFTTrainer, EarlyStopping | None]:
    """TRL's trainer with pond's callbacks (seal, progress, early stopping), and the early stopper if any."""
    import datasets
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback

    callbacks = [CheckpointSealed()] + ([ProgressCallback(progress)] if progress and distributed.is_main() else [])
    stopper = None
    if config.early_stopping_patience:
        stopper = EarlyStopping(config.early_stopping_patience, out_dir / "best")
        callbacks.append(stopper)
    quiet = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # TRL's dataset preparation bars; the step bar is `progress`
    trainer = CountingSFTTrainer(
        model=model,
        args=_sft_config(config, out_dir, seed, dtype, data.eval_examples is not None),
        train_dataset=Dataset.from_list(data.examples),
        eval_dataset=Dataset.from_list(data.eval_examples) if data.eval_examples else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    if not quiet:
        datasets.enable_progress_bars()
    trainer.remove_callback(PrinterCallback)  # per-step dicts on stdout; the history goes to train-result.json
    trainer.keep_adapters_in(dtype)
    return trainer, stopper


def _run(trainer: CountingSFTTrainer, out_dir: Path, has_eval: bool) -> list[dict]:
    """Train from the last sealed checkpoint (or the start); the log history, with the final held-out loss."""
    with distributed.main_first():  # rank 0 sets unsealed checkpoints aside; then all ranks agree on the last
        last = last_sealed(out_dir / "checkpoints")
    if last:
        log.info("resuming from %s", last)
    trainer.train(resume_from_checkpoint=str(last) if last else None)
    history = trainer.state.log_history
    if has_eval and not any("eval_loss" in e and e.get("step") == trainer.state.global_step for e in history):
        trainer.evaluate()  # the held-out loss of the final weights, when no epoch boundary gave it
    return trainer.state.log_history


def _save_final(trainer: CountingSFTTrainer, tokenizer, stopper: EarlyStopping | None, tmp: Path) -> None:
    """The final weights (the best ones, with early stopping) and the tokenizer, into the folder `tmp`."""
    shutil.rmtree(tmp, ignore_errors=True)
    if stopper is not None and stopper.best_dir.is_dir():
        shutil.copytree(stopper.best_dir, tmp)
    else:
        trainer.model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _sort_adapter_config(tmp / "adapter_config.json")


def _result(trainer: CountingSFTTrainer, history: list[dict], final_dir: Path, data: _Data, config: TrainConfig,
            student: Path, dtype: torch.dtype, stopper: EarlyStopping | None) -> TrainResult:
    losses = [e["loss"] for e in history if "loss" in e]
    evals = [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e]
    totals = next((e for e in reversed(history) if "tokens_seen" in e), {})
    tail = losses[-max(1, len(losses) // 10):]
    return TrainResult(
        adapter_dir=final_dir, steps=trainer.state.global_step,
        train_loss=float(sum(tail) / len(tail)), first_loss=float(losses[0]),
        eval_losses=[x for _, x in evals], tokens_seen=int(totals.get("tokens_seen", 0)),
        answer_tokens_seen=int(totals.get("answer_tokens_seen", 0)),
        train_seconds=float(totals.get("train_seconds", 0.0)), rows=len(data.examples),
        method=config.method, base_model=str(student), compute_dtype=str(dtype).removeprefix("torch."),
        losses=losses, eval_steps=[s for s, _ in evals],
        stopped_early=bool(stopper and trainer.state.global_step < trainer.state.max_steps),
        truncated_rows=data.truncated, dropped_rows=data.dropped,
    )


def train(df: pl.DataFrame, config: TrainConfig, out_dir: Path, *, seed: int = 0,
          eval_df: pl.DataFrame | None = None, cache_dir: Path | None = None,
          provenance: dict | None = None, progress: Callable | None = None,
          same_as: Path | None = None) -> TrainResult:
    """Fine-tune `config.student` on `df` (canonical records) and save the adapter under `out_dir`.

    `progress(iterable, description, total)` is a progress wrapper (StepContext.track's contract)
    advanced once per optimizer step.
    `provenance` (dataset_hash, recipe_hash, pond_version, ...) goes into the adapter card.
    Several processes (training.distributed): under a launcher every rank calls this and gets the same
    result; with `processes` > 1 this call starts the ranks itself.
    `same_as`: a folder where the same training may have finished already (`pond run`'s own, for an experiment
    arm on the run's final set): if it holds one with this key but for the held-out set, which does not change
    the weights (PondTrainerMixin.evaluate), its result is returned and nothing trains.
    """
    out_dir = Path(out_dir)
    if config.eval_steps == 0:  # no held-out loss during training: the evaluation after it scores the adapter
        eval_df = None
    start = distributed.processes_to_start(config.processes, config.batch_size)
    set_threads(config.threads)
    student = _setup_student(config, cache_dir, eval_df)
    data = _setup_data(df, eval_df, student, config)
    key = _run_key(config, seed, student, data.hash, data.eval_hash)
    if distributed.is_main():
        _claim(out_dir, key)
    if (done := _finished(out_dir, key)) is not None:
        return done
    if same_as is not None and (done := _same_training(Path(same_as), key)) is not None:
        log.info("the same training finished in %s: its adapter is used, nothing trains", same_as)
        return done
    if start > 1:  # each worker runs this function as one rank, and rank 0 writes the result read here
        distributed.launch(start, train, (df, config, out_dir),
                           {"seed": seed, "eval_df": eval_df, "cache_dir": cache_dir, "provenance": provenance},
                           progress)
        return _recorded(out_dir, key)

    dtype = resolve_dtype(config.compute_dtype)
    model, tokenizer, peft_config = _setup_model(student, config)
    trainer, stopper = _setup_trainer(model, tokenizer, peft_config, config, out_dir, seed, dtype, data, progress)
    history = _run(trainer, out_dir, data.eval_examples is not None)
    result = _finish(_Run(config, student, data, seed, key, out_dir, provenance or {}), trainer, tokenizer, stopper,
                     history, dtype) if distributed.is_main() else None
    distributed.wait_for_everyone()  # the other ranks return what rank 0 has written
    return result or _recorded(out_dir, key)


def _finish(run: _Run, trainer: CountingSFTTrainer, tokenizer, stopper: EarlyStopping | None, history: list[dict],
            dtype: torch.dtype) -> TrainResult:
    """Rank 0's part: the final adapter (or model) with its card, merged/, train-result.json, then train.DONE."""
    config, out_dir = run.config, run.out_dir
    final_name = "model" if config.method == "full" else "adapter"
    final_dir, tmp = out_dir / final_name, out_dir / (final_name + ".tmp")
    _save_final(trainer, tokenizer, stopper, tmp)
    result = _result(trainer, history, final_dir, run.data, config, run.student, dtype, stopper)
    write_card(tmp, result, config.model_dump(mode="json"), run.seed, run.provenance, run.data.hash)
    shutil.rmtree(final_dir, ignore_errors=True)
    tmp.rename(final_dir)  # a folder: written beside, then renamed whole
    if config.merge and config.method != "full":
        result.merged_dir = _merge(run.student, final_dir, out_dir / "merged",
                                   torch.bfloat16 if dtype == torch.bfloat16 else torch.float32)
    store.write_json({"result": result.to_json(), "provenance": run.provenance,
                      "hardware": hardware(result.compute_dtype), "log_history": history}, out_dir / RESULT, indent=1)
    store.mark_finished(out_dir, store.key_of(run.key), name=DONE)  # last: it vouches for everything above
    return result


def _finished(out_dir: Path, key: dict) -> TrainResult | None:
    """The recorded result of a training with this key that finished here, else None."""
    if not store.finished(out_dir, store.key_of(key), name=DONE):
        return None
    done = _read_json(out_dir / RESULT)
    return TrainResult.from_json(done["result"], out_dir) if done and "result" in done else None


def _same_training(folder: Path, key: dict) -> TrainResult | None:
    """The result of a training that finished in `folder` with `key` but perhaps another held-out set."""
    theirs = _read_json(folder / KEY)
    if theirs is None or {**theirs, "eval_hash": None} != {**key, "eval_hash": None}:
        return None
    return _finished(folder, theirs)


def _recorded(out_dir: Path, key: dict) -> TrainResult:
    """The result rank 0 wrote, read by the processes that did not write it."""
    if (done := _finished(out_dir, key)) is None:
        raise RuntimeError(f"training in several processes ended without rank 0 finishing {out_dir}")
    return done
