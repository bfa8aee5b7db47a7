"""MLflow tracking: one MLflow run per arm x seed, in a local store inside the experiment folder.

The default store is SQLite (`<out>/mlflow.db`, artifacts in `<out>/mlartifacts/`): MLflow 3
refuses new plain-file stores (`./mlruns`), and SQLite needs no server either. Browse it with

    mlflow ui --backend-store-uri sqlite:///runs/NAME/mlflow.db

`experiment.mlflow_uri` points at a team server instead. Tracking is a record of the run, not
part of its result: if MLflow fails, the experiment goes on and the error is reported.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

log = logging.getLogger(__name__)


def tracking_uri(out_dir: Path, uri: str | None) -> str:
    return uri or f"sqlite:///{Path(out_dir).resolve() / 'mlflow.db'}"


def log_arm_seed(out_dir: Path, uri: str | None, experiment: str, run_name: str, params: dict, metrics: dict,
                 artifacts: list[Path], tags: dict | None = None) -> str:
    """Log one finished arm x seed; returns the MLflow run id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(out_dir, uri))
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        exp_id = found.experiment_id
    else:
        # A local store keeps its artifacts beside it; a server decides for itself.
        location = None if uri else (Path(out_dir).resolve() / "mlartifacts").as_uri()
        exp_id = client.create_experiment(experiment, artifact_location=location)
    run = client.create_run(exp_id, run_name=run_name, tags=tags or {})
    rid = run.info.run_id
    try:
        for k, v in params.items():
            client.log_param(rid, k, json.dumps(v) if isinstance(v, (dict, list)) else v)
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                client.log_metric(rid, k, float(v))
        for path in artifacts:
            if Path(path).exists():
                client.log_artifact(rid, str(path))
        client.set_terminated(rid, "FINISHED")
    except Exception:
        client.set_terminated(rid, "FAILED")
        raise
    return rid
