"""The `train:` section of a recipe: what student, how, and for how long."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from curation.settings import DEFAULT_MAX_SEQ_LEN, DEFAULT_STUDENT


class DPOOptions(BaseModel):
    """`train.dpo`: the options of `method: dpo` (training/dpo.py, docs/preference-pairs.md)."""

    model_config = ConfigDict(extra="forbid")

    reference: Literal["sft", "base"] = Field(
        "sft",
        description="sft: first train an SFT adapter on all the training rows (the options above, method "
                    "`base_method`, into sft/), then DPO goes on training that adapter, with it frozen as the "
                    "reference; base: DPO trains a new LoRA adapter on the student, the student itself the reference.")
    base_method: Literal["qlora", "lora"] = Field(
        "qlora", description="How the student is loaded under the adapters, for the SFT stage and for DPO, as "
                             "`method` means it (qlora: frozen 4-bit NF4; lora: frozen, in the compute dtype). "
                             "Evaluation loads it the same way.")
    beta: float = Field(0.1, gt=0, description="DPO's beta (TRL's default): how far from the reference the loss "
                                               "lets the policy move; higher stays closer.")
    lr: float = Field(5e-6, gt=0, description="Peak learning rate of the DPO stage (LLaMA-Factory's LoRA DPO example "
                                              "uses 5e-6; `lr` above is the SFT stage's).")
    epochs: float = Field(1.0, gt=0, description="Passes over the preference pairs.")
    max_steps: int | None = Field(None, gt=0, description="DPO optimizer steps; overrides `epochs` when set.")


class TrainConfig(BaseModel):
    """Fine-tune the student on the curated set (QLoRA by default)."""

    model_config = ConfigDict(extra="forbid")

    student: str = Field(
        DEFAULT_STUDENT,
        description="Student model: a name under $POND_CACHE_DIR/models/ or a path to any local Hugging Face "
                    "causal-LM folder (config, weights, tokenizer with a chat template).")
    method: Literal["qlora", "lora", "full", "dpo"] = Field(
        "qlora",
        description="qlora: frozen 4-bit NF4 base (double quantisation) + LoRA adapters; lora: frozen base in the "
                    "compute dtype + LoRA adapters; full: every weight trained (saves a whole model, not an adapter); "
                    "dpo: LoRA preference training (TRL's DPOTrainer) on the rows that carry a preference pair "
                    "(`preference_pairs`), after SFT or on the base: `dpo` below.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training set (fractions allowed).")
    max_steps: int | None = Field(
        None, gt=0, description="Optimizer steps to run; overrides `epochs` when set (equal budgets across arms).")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate (AdamW), reached after warm-up, then cosine decay.")
    lora_r: int = Field(16, gt=0, description="LoRA rank.")
    lora_alpha: int = Field(32, gt=0, description="LoRA scaling numerator (scale = lora_alpha / lora_r).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input path.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="Modules that get LoRA adapters: 'all-linear' (every linear projection except the output "
                    "head) or a list of module names such as [q_proj, v_proj]; unknown names are errors.")
    batch_size: int = Field(8, gt=0, description="Sequences per micro-batch.")
    grad_accum: int = Field(1, gt=0, description="Micro-batches accumulated per optimizer step.")
    max_seq_len: int = Field(
        DEFAULT_MAX_SEQ_LEN, gt=0, description="Tokens per sequence; longer conversations are cut at the end. Must not exceed the "
                               "model's maximum positions.")
    packing: bool = Field(
        False, description="Pack several short conversations into each sequence (best-fit decreasing, attention "
                           "kept within each conversation) instead of padding.")
    group_by_length: bool = Field(
        True, description="Batch conversations of similar length together (less padding, same data per epoch); "
                          "ignored with packing.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, ~20-30% slower.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Fraction of steps spent warming the learning rate up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    save_steps: int = Field(50, gt=0, description="Write a resumable checkpoint every this many steps.")
    save_total_limit: int | None = Field(2, gt=0, description="Checkpoints kept on disk (oldest deleted first).")
    eval_steps: int | None = Field(
        None, ge=0, description="Held-out loss every this many steps; default once per epoch (and at the end); 0: "
                                "never during training (`pond run`'s evaluation scores the adapter after it).")
    eval_on_start: bool = Field(
        False, description="Also measure the held-out loss before the first step (the untrained baseline).")
    early_stopping_patience: int | None = Field(
        None, gt=0, description="Stop after this many held-out evaluations without improvement and keep the "
                                "best adapter (needs a held-out set).")
    merge: bool = Field(False, description="Also save the base model with the adapter merged in (merged/).")
    compute_dtype: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Arithmetic precision. auto: bf16 on CUDA (when supported), and on CPU the measured faster "
                    "choice, bf16 on CPUs with native BF16 (AVX-512 BF16 / AMX), else fp32.")
    threads: int | None = Field(
        None, gt=0, description="CPU threads for torch; default: OMP_NUM_THREADS if set, else every core this "
                                "process may use.")
    processes: int = Field(
        1, gt=0,
        description="Train in this many local processes with DDP (training.distributed; docs/scale-out.md): one "
                    "per GPU, or on a CPU each with its share of the cores (gloo). batch_size is the global "
                    "micro-batch and must split evenly over them; more than the machine's GPUs (or CPU cores) "
                    "is an error. Under a launcher (torchrun, accelerate launch) leave it at 1: the launcher "
                    "decides. Not part of the training key: a run may resume on another number.")
    dpo: DPOOptions = Field(
        default_factory=DPOOptions,
        description="With method dpo: `reference` (sft or base), `base_method` (qlora or lora), `beta`, and the DPO "
                    "stage's own `lr`, `epochs`, `max_steps` (the other options above apply to both stages).")

    @model_validator(mode="after")
    def _dpo_options_need_dpo(self) -> TrainConfig:
        if self.method != "dpo" and self.dpo != DPOOptions():
            raise ValueError(f"`dpo:` options are for `method: dpo`; this section trains with method {self.method}")
        if self.batch_size % self.processes:
            raise ValueError(f"batch_size={self.batch_size} does not split over {self.processes} processes; use a "
                             f"multiple of {self.processes} (batch_size is the global micro-batch)")
        if self.eval_steps == 0 and self.early_stopping_patience:
            raise ValueError("early_stopping_patience needs the held-out loss during training; eval_steps is 0")
        return self

    @model_serializer(mode="wrap")
    def _dump_only_what_is_set(self, handler):
        # A config dumps as it did before `dpo` and `processes` existed unless it uses them: the training key
        # and the hash of every existing recipe stay the same.
        data = handler(self)
        if self.method != "dpo":
            data.pop("dpo", None)
        if self.processes == 1:
            data.pop("processes", None)
        return data

    def as_sft(self) -> TrainConfig:
        """This section as SFT training and evaluation read it: itself, or with method dpo its SFT stage
        (method `dpo.base_method`), which also says how to load the student under the DPO adapter."""
        return self if self.method != "dpo" else self.model_copy(update={"method": self.dpo.base_method})
