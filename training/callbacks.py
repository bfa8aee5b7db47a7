"""Trainer pieces pond adds to TRL's trainers (SFT and DPO): token accounting, the diverged-loss stop, the
adapters' dtype on resume, progress, early stopping."""
from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler
from trl import SFTTrainer

from training.answer_head import answer_loss, plain_logits
from training.data import IGNORE
from training.distributed import is_main


class PondTrainerMixin:
    """What pond adds to a TRL trainer (SFTTrainer, DPOTrainer), in one place:

    - running totals of the tokens it trains on and of the wall time, in every log entry
      (`tokens_seen`, `answer_tokens_seen`, `train_seconds`): saved in each checkpoint's
      `trainer_state.json`, so a resumed run goes on counting instead of starting from zero; with
      several processes they are summed over the ranks. A subclass says what a batch holds by
      calling `_count(tokens, answer_tokens)` from its compute_loss;
    - a diverged loss (NaN or inf) is an error naming the step and what to lower, not a hidden NaN
      in the history (the trainer's `logging_nan_inf_filter` is off);
    - adapters a resume reloads keep the dtype they trained in (`keep_adapters_in` sets it at the start).
    """

    lower_what = "lower the learning rate"  # the diverged-loss error's advice

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pond_totals: dict[str, float] | None = None
        self._pond_t0 = 0.0
        self._pond_new = [0, 0]  # this rank's tokens and answer tokens since the last log entry

    def _totals(self) -> dict[str, float]:
        if self._pond_totals is None:  # first use after a (re)start: go on from the last logged totals
            last = next((e for e in reversed(self.state.log_history) if "tokens_seen" in e), {})
            self._pond_totals = {k: last.get(k, 0) for k in ("tokens_seen", "answer_tokens_seen", "train_seconds")}
            self._pond_t0 = time.perf_counter()
        return self._pond_totals

    def _count(self, tokens: int, answer_tokens: int) -> None:
        """This rank's batch: `tokens` through the model, `answer_tokens` of them scored by the loss."""
        self._totals()  # on the first step: the totals start from the log history (a resumed run's)
        self._pond_new[0] += int(tokens)
        self._pond_new[1] += int(answer_tokens)

    def keep_adapters_in(self, dtype: torch.dtype) -> None:
        """TRL casts QLoRA adapters to bf16 (the QLoRA paper's choice). With bf16 compute pond keeps that: fp32
        adapters under bf16 autocast measured 35% slower per step here (SmolLM2-135M, batch 8 x 256, CPU).
        With fp32 compute the adapters are fp32 too, as asked."""
        if dtype == torch.float32:
            for p in self.model.parameters():
                if p.requires_grad:
                    p.data = p.data.float()

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # peft upcasts adapters it loads to fp32 (autocast_adapter_dtype); a resumed run must keep
        # training in the dtype the uninterrupted run used, or the two drift apart.
        dtypes = {n: p.dtype for n, p in self.model.named_parameters() if p.requires_grad}
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        for n, p in self.model.named_parameters():
            if n in dtypes and p.dtype != dtypes[n]:
                p.data = p.data.to(dtypes[n])

    def evaluate(self, *args, **kwargs):
        # Held-out evaluation must not change what is learned: each new data loader iterator draws its base seed
        # from the global RNG, which would move every later dropout mask and shuffle. So the same training with and
        # without a held-out set gives the same weights (and one run's training can stand for the other's).
        with torch.random.fork_rng(devices=[]):
            return super().evaluate(*args, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        for key in ("loss", "eval_loss"):
            if key in logs and not math.isfinite(logs[key]):
                raise FloatingPointError(f"training diverged: {key} is {logs[key]} at step {self.state.global_step} "
                                         f"(lr {self.args.learning_rate}); {self.lower_what}")
        if self._pond_totals is not None and "loss" in logs:
            now = time.perf_counter()
            self._pond_totals["train_seconds"] += now - self._pond_t0
            self._pond_t0 = now
            new = torch.tensor(self._pond_new, dtype=torch.int64, device=self.args.device)
            if self.args.world_size > 1:  # every rank logs at the same steps, so the sum is collective-safe
                new = self.accelerator.reduce(new, "sum")
            self._pond_totals["tokens_seen"] += int(new[0])
            self._pond_totals["answer_tokens_seen"] += int(new[1])
            self._pond_new = [0, 0]
            logs.update({k: (round(v, 3) if k == "train_seconds" else int(v)) for k, v in self._pond_totals.items()})
        super().log(logs, start_time)


class CountingSFTTrainer(PondTrainerMixin, SFTTrainer):
    """SFTTrainer with pond's token totals, diverged-loss stop and resume dtype (PondTrainerMixin), length
    groups of the global batch, and the loss through the output layer at answer positions only
    (training.answer_head) where that is the loss TRL computes. TRL's entropy and token-accuracy metrics,
    which pond reads nowhere, are then not logged."""

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler):
            # Length groups of the global batch, not of one rank's share: the rows each optimizer step
            # sees are then the same on any number of processes (the Trainer hands batch k to rank k % N).
            sampler.batch_size *= self.args.world_size
        return sampler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            mask = inputs.get("attention_mask")
            # Tokens that are predicted and scored: shifted labels outside the ignore index.
            self._count(int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel()),
                        int((inputs["labels"][:, 1:] != IGNORE).sum()))
        if return_outputs or not self._answer_head_applies(model):
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        # The decoder is called past the model's forward, which accelerate wraps in autocast: set it here.
        with self.accelerator.autocast():
            return answer_loss(model, inputs, num_items_in_batch)

    def _answer_head_applies(self, model) -> bool:
        """Whether TRL's loss here is the plain mean cross-entropy over answer tokens of one unwrapped model.
        Kept on TRL's path: several processes (DDP's wrapper syncs gradients in its forward), a compiled or
        otherwise wrapped model, logits scaled or capped, and TRL's other losses (label smoothing, DFT, a
        custom loss function, MoE auxiliary loss)."""
        return (self.args.world_size == 1 and self.accelerator.unwrap_model(model) is model and plain_logits(model)
                and self.args.loss_type == "nll" and self.label_smoother is None and self.compute_loss_func is None
                and not self.aux_loss_enabled)


class ProgressCallback(TrainerCallback):
    """Drives a `track(iterable, description, total)` progress wrapper (pond's StepContext.track
    contract, a rich bar in the CLI) one item per optimizer step.

    The wrapper is consumed like a loop, so a wrapper that raises (Ctrl-C, a test's simulated
    kill) stops training exactly as an interrupted loop would.
    """

    def __init__(self, track: Callable, description: str = "train"):
        self.track = track
        self.description = description
        self._it = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._it = iter(self.track(range(state.max_steps), self.description, state.max_steps))
        for _ in range(state.global_step):  # a resumed run starts where it stopped
            next(self._it, None)

    def on_step_end(self, args, state, control, **kwargs):
        if self._it is not None:
            next(self._it, None)

    def on_train_end(self, args, state, control, **kwargs):
        if self._it is not None:
            for _ in self._it:  # let the wrapper finish (closes its bar)
                pass
            self._it = None


class EarlyStopping(TrainerCallback):
    """Stop after `patience` evaluations without a lower held-out loss; keep the best adapter on disk.

    Reads the evaluation history from the trainer state (which checkpoints save), so a resumed
    run keeps counting where it stopped.
    """

    def __init__(self, patience: int, best_dir: Path):
        self.patience = patience
        self.best_dir = Path(best_dir)
        self.stopped = False

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        losses = [e["eval_loss"] for e in state.log_history if "eval_loss" in e]
        if not losses:
            return
        best_i = min(range(len(losses)), key=lambda i: (losses[i], i))  # ties: the earlier one is best
        # Every rank sees the same gathered losses, so all stop together; only rank 0 writes best/.
        if best_i == len(losses) - 1 and is_main():
            tmp = self.best_dir.with_name(self.best_dir.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp)
            (tmp / "STEP").write_text(str(state.global_step))
            shutil.rmtree(self.best_dir, ignore_errors=True)
            tmp.rename(self.best_dir)
        if len(losses) - 1 - best_i >= self.patience:
            control.should_training_stop = True
            self.stopped = True


def lora_b_grads(model: torch.nn.Module) -> dict[str, float]:
    """Gradient norm of every LoRA B tensor (0.0 where there is none): the repack regression check."""
    return {n: (0.0 if p.grad is None else float(p.grad.norm()))
            for n, p in model.named_parameters() if "lora_B" in n}
