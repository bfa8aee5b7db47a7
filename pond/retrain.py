"""The `retrain:` rule: after a drop, train a new adapter version when the rule says so.

    retrain: {when: {new_rows: 500, drift_p: 0.01, loss_increase: 0.05}, any: true}

- `new_rows`: curated rows added by drops since the last adapter version (or since the run) reach it;
- `drift_p`: the drop's embedding two-sample test gives p below it;
- `loss_increase`: the current adapter's loss on the drop's rows exceeds its held-out loss by more than
  this fraction.
`any: true` fires on any listed condition, `any: false` only when all hold; no condition, no retraining.

A version is `adapters/vN/` (the trainer's `adapter/` inside, resumable like any training) with
`card.json`: the dataset hash and the drops it saw, the previous version, and its held-out loss
against the previous version's (or the base model's, for the first) on the same held-out rows, each
with a bootstrap interval and the paired difference. With MLflow (a local SQLite store in the run
folder by default) every version is logged and registered as a version of one registered model.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curation import store
from pond import __version__, layout, ledger
from pond.retrain_config import RetrainConfig

Log = Callable[[str], None]


def rule(config: RetrainConfig | None, new_rows: int, drift: dict) -> dict[str, Any]:
    """Which conditions hold and whether the rule fires."""
    if config is None:
        return {"fired": False, "checks": {}, "note": "the recipe has no retrain: section"}
    checks: dict[str, dict] = {}
    w = config.when
    if w.new_rows is not None:
        checks["new_rows"] = {"value": new_rows, "threshold": w.new_rows, "met": new_rows >= w.new_rows}
    if w.drift_p is not None:
        p = drift.get("p_value")
        checks["drift_p"] = {"value": p, "threshold": w.drift_p, "met": p is not None and p < w.drift_p}
    if w.loss_increase is not None:
        inc = (drift.get("adapter_loss") or {}).get("relative_increase")
        checks["loss_increase"] = {"value": inc, "threshold": w.loss_increase,
                                   "met": inc is not None and inc > w.loss_increase}
    met = [c["met"] for c in checks.values()]
    fired = bool(met) and (any(met) if config.any else all(met))
    return {"fired": fired, "any": config.any, "checks": checks}


# -- versions ------------------------------------------------------------------------------------

def current_adapter(run: Path) -> tuple[str | None, Path | None]:
    """(name, folder) of the adapter now in use: the newest version, else the run's own `adapter/`."""
    for vdir in reversed(layout.version_dirs(run)):
        if (vdir / layout.VERSION_CARD).exists():
            return vdir.name, vdir / layout.ADAPTER
    own = layout.run_adapter(run)
    return (layout.ADAPTER, own) if own is not None else (None, None)


def drops_seen_by(run: Path, name: str | None) -> int:
    """The last drop the adapter `name` was trained on (0: the run itself; -1: no adapter)."""
    if name is None:
        return -1
    if name == layout.ADAPTER:
        return 0
    return max(json.loads((layout.adapters_dir(run) / name / layout.VERSION_CARD).read_text())["drops"])


def new_rows_since(run: Path, name: str | None) -> int:
    """Curated rows of the drops after the ones adapter `name` saw (no adapter: all curated rows)."""
    lineage = pl.read_parquet(Path(run) / layout.LINEAGE)
    return int(lineage.filter(pl.col("drop") > drops_seen_by(run, name)).height)


def loss_rows(train_config, rows: pl.DataFrame, adapter_dir: Path | None, cache_dir: Path | None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Per row (answer-token NLL sum, answer tokens) under the student, with `adapter_dir` on top if given."""
    from evaluation.loss_memo import losses
    from training.model import resolve_student, set_threads

    set_threads(train_config.threads)
    student = resolve_student(train_config.student, cache_dir)
    return losses(student, train_config.method, train_config.compute_dtype, rows, train_config.max_seq_len, 8,
                  adapter_dir=adapter_dir, cache_dir=cache_dir)


def scorable(df: pl.DataFrame) -> pl.DataFrame:
    """Rows with a user prompt and an assistant answer (what a loss can be computed on)."""
    from evaluation.config import EvaluateConfig
    from evaluation.scoring import prepare_heldout

    try:
        return prepare_heldout(df, EvaluateConfig(heldout="unused"))
    except ValueError:
        return df.clear()


def heldout_rows(run: Path, recipe) -> pl.DataFrame | None:
    """The run's held-out set: `evaluate.heldout`, else the holdout step's `heldout.parquet`."""
    from evaluation.scoring import load_heldout

    spec = recipe.evaluate.heldout if recipe.evaluate is not None else f"run:{layout.HELDOUT}"
    try:
        df, _ = load_heldout(spec, run_dir=Path(run), base_dir=layout.run_base_dir(run))
    except FileNotFoundError:
        return None
    held = scorable(df)
    return held if held.height else None


def compare(train_config, held: pl.DataFrame, new: Path, previous: Path | None, cache_dir: Path | None,
            seed: int) -> dict[str, Any]:
    """Held-out loss of the new adapter and of the previous one (None: the base model) on the same rows."""
    from evaluation.bootstrap import bootstrap_ci, paired_difference_ci

    nll_n, tok_n = loss_rows(train_config, held, new, cache_dir)
    nll_p, tok_p = loss_rows(train_config, held, previous, cache_dir)
    per_n = np.divide(nll_n, tok_n, out=np.full(len(tok_n), np.nan), where=tok_n > 0)
    per_p = np.divide(nll_p, tok_p, out=np.full(len(tok_p), np.nan), where=tok_p > 0)
    diff = paired_difference_ci(per_n, per_p, tok_n, tok_p, seed=seed)
    return {"metric": "heldout_loss", "heldout_rows": held.height,
            "new": bootstrap_ci(per_n, tok_n, seed=seed).to_dict(),
            "previous": bootstrap_ci(per_p, tok_p, seed=seed).to_dict(),
            "new_minus_previous": diff.to_dict(),
            "verdict": ("new version better" if diff.high < 0 else "new version worse" if diff.low > 0
                        else "no clear difference")}


def register(run: Path, recipe, card: dict, card_path: Path, adapter: Path) -> dict[str, Any]:
    """Log the version and its comparison to MLflow and register it under one registered model."""
    from mlflow.tracking import MlflowClient

    from evaluation.tracking import log_arm_seed, tracking_uri

    cfg = recipe.retrain
    cmp = card.get("comparison") or {}
    metrics = {"heldout_loss": (cmp.get("new") or {}).get("mean"),
               "previous_heldout_loss": (cmp.get("previous") or {}).get("mean"),
               "new_minus_previous": (cmp.get("new_minus_previous") or {}).get("mean"),
               "new_minus_previous_low": (cmp.get("new_minus_previous") or {}).get("low"),
               "new_minus_previous_high": (cmp.get("new_minus_previous") or {}).get("high"),
               "curated_rows": card["curated_rows"]}
    params = {"version": card["version"], "dataset_hash": card["dataset_hash"], "drops": card["drops"],
              "previous_version": card["previous_version"] or "none"}
    rid = log_arm_seed(run, cfg.mlflow_uri, f"{recipe.name}-versions", card["version"], params, metrics, [card_path],
                       tags={"pond.version": card["version"]})
    client = MlflowClient(tracking_uri=tracking_uri(run, cfg.mlflow_uri))
    name = recipe.name + layout.MLFLOW_MODEL_SUFFIX
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name, description=f"adapter versions of the pond run {recipe.name}")
    mv = client.create_model_version(name, source=adapter.resolve().as_uri(), run_id=rid,
                                     tags={"pond.version": card["version"], "dataset_hash": card["dataset_hash"]})
    return {"tracking_uri": tracking_uri(run, cfg.mlflow_uri), "registered_model": name,
            "model_version": str(mv.version), "run_id": rid}


def train_version(run: Path, recipe, version: int, trigger: dict, *, cache_dir: Path | None = None,
                  track: Callable | None = None, log: Log = lambda m: None) -> dict[str, Any]:
    """Train adapters/v<version> on the pond's curated union; write its card; register it."""
    from training.trainer import RESULT as TRAIN_RESULT, train

    run = Path(run)
    vdir = layout.version_dir(run, version)
    vdir.mkdir(parents=True, exist_ok=True)
    curated = run / layout.CURATED
    data = pl.read_parquet(curated)
    drops = sorted(pl.read_parquet(run / layout.LINEAGE)["drop"].unique().to_list())
    prev_name, prev_dir = current_adapter(run)
    held = heldout_rows(run, recipe)
    provenance = {"dataset_hash": store.file_digest(curated), "dataset_path": str(curated), "recipe_hash": recipe.digest(),
                  "recipe": recipe.name, "pond_version": __version__, "drops": drops,
                  "previous_version": prev_name, "adapter_version": f"v{version}"}
    log(f"retrain: v{version} on {data.height} curated rows (drops {drops}), previous {prev_name or 'none'}")
    ledger.append(run, "retrain", version=f"v{version}", rows=data.height)
    result = train(data, recipe.train, vdir, seed=recipe.seed, eval_df=held, cache_dir=cache_dir,
                   provenance=provenance, progress=track)
    card: dict[str, Any] = {
        "version": f"v{version}", "adapter": str(result.adapter_dir), "dataset_hash": provenance["dataset_hash"],
        "curated_rows": data.height, "drops": drops, "previous_version": prev_name,
        "previous_adapter": str(prev_dir) if prev_dir else None, "trigger": trigger,
        "train": {"steps": result.steps, "first_loss": result.first_loss, "train_loss": result.train_loss},
    }
    if held is not None:
        card["comparison"] = {"against": prev_name or "base_model",
                              **compare(recipe.train, held, result.adapter_dir, prev_dir, cache_dir, recipe.seed)}
    else:
        card["comparison"] = None
        card["comparison_note"] = "no held-out set (add a holdout step or evaluate.heldout)"
    card_path = vdir / layout.VERSION_CARD
    if recipe.retrain is not None and recipe.retrain.mlflow:
        try:
            card["mlflow"] = register(run, recipe, card, vdir / TRAIN_RESULT, result.adapter_dir)
        except Exception as exc:  # tracking is a record, not the result: the version stands without it
            card["mlflow"] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"retrain: MLflow failed ({type(exc).__name__}: {exc}); the version is kept")
    store.write_json(card, card_path)  # last: a version with a card is finished
    ledger.append(run, "retrained", version=f"v{version}")
    return card


def maybe_retrain(run: Path, drop: Path, recipe, drift: dict, *, cache_dir: Path | None = None,
                  track: Callable | None = None, log: Log = lambda m: None, allowed: bool = True) -> dict[str, Any]:
    """Check the rule after a drop (the decision is written once, so a resumed update keeps it) and
    train the version it calls for."""
    path = Path(drop) / layout.RETRAIN
    decision = layout.read_json(path)
    if not decision:
        name, _ = current_adapter(run)
        decision = {"current_adapter": name, **rule(recipe.retrain, new_rows_since(run, name), drift)}
        if decision["fired"]:
            if recipe.train is None:
                decision["note"] = "the rule fired, but the recipe has no train: section: nothing trained"
            elif not allowed:
                decision["note"] = "the rule fired; training skipped (--no-train)"
            else:
                done = [v for v in layout.version_dirs(run) if (v / layout.VERSION_CARD).exists()]
                decision["version"] = int(done[-1].name[1:]) + 1 if done else 1
        store.write_json(decision, path)
    if decision.get("version") is not None and not (layout.version_dir(run, decision["version"])
                                                   / layout.VERSION_CARD).exists():
        decision["card"] = train_version(run, recipe, decision["version"], decision, cache_dir=cache_dir,
                                         track=track, log=log)
    return decision
