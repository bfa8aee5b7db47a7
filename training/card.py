"""What a training run leaves behind besides weights: result.json and the adapter card."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from curation.settings import describe_cpu, gpu


@dataclass
class TrainResult:
    adapter_dir: Path
    steps: int
    train_loss: float  # mean loss of the last tenth of the steps (at least one)
    first_loss: float  # loss of the first optimizer step
    eval_losses: list[float]
    tokens_seen: int  # non-padding tokens through the model in training
    answer_tokens_seen: int  # tokens scored by the loss (assistant tokens)
    train_seconds: float
    rows: int  # training rows with at least one assistant token
    # Extensions (keyword-only for consumers): the details behind the figures above.
    method: str = "qlora"
    base_model: str = ""
    compute_dtype: str = ""
    merged_dir: Path | None = None
    losses: list[float] = field(default_factory=list)  # per optimizer step
    eval_steps: list[int] = field(default_factory=list)  # the step of each eval loss
    stopped_early: bool = False
    truncated_rows: int = 0
    dropped_rows: int = 0  # rows without any assistant token (after truncation)

    def to_json(self) -> dict:
        d = asdict(self)
        d["adapter_dir"] = str(self.adapter_dir)
        d["merged_dir"] = None if self.merged_dir is None else str(self.merged_dir)
        return d

    @classmethod
    def from_json(cls, d: dict, out_dir: Path) -> TrainResult:
        # Paths are stored as written; a moved run folder still finds its own adapter.
        d = dict(d)
        d["adapter_dir"] = out_dir / Path(d["adapter_dir"]).name
        if d.get("merged_dir"):
            d["merged_dir"] = out_dir / Path(d["merged_dir"]).name
        return cls(**d)


def card_tags(method: str, config: dict) -> list[str]:
    """The card's tags: pond, how the student was loaded (qlora, lora, full), and what trained the weights:
    sft, dpo, or both for DPO on top of an SFT adapter (train.dpo.reference: sft)."""
    if method != "dpo":
        return ["pond", method, "sft"]
    dpo = config.get("dpo") or {}
    return ["pond", dpo.get("base_method", "qlora")] + (["sft"] if dpo.get("reference", "sft") == "sft" else []) + ["dpo"]


def write_card(adapter_dir: Path, result: TrainResult, config: dict, seed: int, provenance: dict,
               data_hash: str) -> Path:
    """README.md in the adapter folder: enough to know what this adapter is and what it saw."""
    prov = provenance or {}
    tags = ", ".join(card_tags(result.method, config))
    hp = "\n".join(f"| {k} | `{json.dumps(v)}` |" for k, v in sorted(config.items()))
    none = ("none (eval_steps 0: the evaluation after training scores it)" if config.get("eval_steps") == 0
            else "none (no held-out set)")
    evals = ", ".join(f"{x:.4f}" for x in result.eval_losses) or none
    text = f"""---
library_name: peft
base_model: {result.base_model}
tags: [{tags}]
---
# pond adapter: {Path(result.base_model).name} ({result.method})

Trained by pond {prov.get("pond_version", "(version not given)")} on {time.strftime("%Y-%m-%d %H:%M:%S %Z")}.

| what | value |
|---|---|
| base model | `{result.base_model}` |
| method | {result.method} (compute dtype {result.compute_dtype}) |
| hardware | {gpu() or describe_cpu()} |
| dataset hash (curated.parquet) | `{prov.get("dataset_hash", "not given")}` |
| tokenized training data hash | `{data_hash}` |
| training rows | {result.rows} ({result.dropped_rows} dropped without assistant tokens, {result.truncated_rows} truncated) |
| recipe hash | `{prov.get("recipe_hash", "not given")}` |
| seed | {seed} |
| steps | {result.steps}{" (stopped early)" if result.stopped_early else ""} |
| tokens seen / answer tokens | {result.tokens_seen} / {result.answer_tokens_seen} |
| training time | {result.train_seconds:.1f} s |
| first / final training loss | {result.first_loss:.4f} / {result.train_loss:.4f} |
| held-out loss per evaluation | {evals} |

## Hyperparameters

| option | value |
|---|---|
{hp}

## Provenance

```json
{json.dumps(prov, indent=2, sort_keys=True, default=str)}
```

Load with `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), "<this folder>")`.
"""
    path = adapter_dir / "README.md"
    path.write_text(text)
    return path
