"""The embedding model on OpenVINO's CPU runtime: converted offline from the local torch model, and,
for `backend: openvino-int8`, quantised to int8 with NNCF on a fixed calibration set (#30).

Both are built once and kept as IR under `<cache_dir>/openvino/<key>/` (the embedder's key names the
backend, so fp and int8 IRs never mix); a later process reads the IR and converts nothing.

int8 (measured on the 2-core EPYC, bench/embed.py; variants in docs/embeddings.md):
- NNCF post-training quantisation, `MIXED` preset (symmetric weights, asymmetric activations), model
  type TRANSFORMER (SmoothQuant on the linear layers);
- the feed-forward output projections stay in floating point: their input is GELU's output, whose
  long tail int8 cuts worst (all layers int8: min cosine to a plain fp32 encode 0.979-0.993 depending
  on the calibration sample; with these six layers kept: 0.997);
- calibration: the first CALIBRATION_TEXTS ShareGPT conversations (the `data` extra), rendered as
  pond renders rows, so every machine builds the same model from the same inputs. They calibrate
  activation ranges only; nothing is trained on them.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

OV_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
CALIBRATION_TEXTS = 96
CALIBRATION_BATCH = 8
# nn.Linear layers left in floating point by int8 (BERT naming; matches nothing in other models)
FLOAT_LAYERS = (r".*layer\.\d+\.output\.dense.*",)


def compile_model(st_model, ir_dir: Path | None, precision: str, threads: int, int8: bool = False,
                  calibration: list[dict[str, np.ndarray]] | None = None):
    """Compiled model (input ids, mask, token types -> normalised embedding): the IR saved under
    `ir_dir` when there, else converted (and for int8, quantised on `calibration`) and saved."""
    import openvino as ov

    xml = ir_dir / "model.xml" if ir_dir is not None else None
    if xml is not None and xml.is_file():
        return _compiled(str(xml), precision, threads)
    om = _convert(st_model)
    if int8:
        om = _quantize(om, calibration)
    if xml is None:
        return ov.Core().compile_model(om, "CPU", _config(precision, threads))
    _save(om, xml)
    return _compiled(str(xml), precision, threads)


@functools.lru_cache(maxsize=4)
def _compiled(xml: str, precision: str, threads: int):
    """One compiled model per IR in a process, as the torch model is loaded once (_load_model): not read and
    compiled again for every call (every step, every chunk)."""
    import openvino as ov

    core = ov.Core()
    return core.compile_model(core.read_model(xml), "CPU", _config(precision, threads))


def _config(precision: str, threads: int) -> dict:
    return {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}


def _convert(st_model):
    """The transformer, mean pooling and L2 norm as one OpenVINO model, from the fp32 torch module."""
    import openvino as ov
    import torch

    names = [type(m).__name__ for m in st_model]
    if names[:2] != ["Transformer", "Pooling"] or getattr(st_model[1], "pooling_mode", None) != "mean":
        raise ValueError(f"backend openvino supports transformer + mean pooling models only, not {names}")
    hf = st_model[0].auto_model

    class Wrapped(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.m(input_ids=input_ids, attention_mask=attention_mask,
                       token_type_ids=token_type_ids).last_hidden_state.float()
            mask = attention_mask.unsqueeze(-1).to(h.dtype)
            e = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(e, dim=-1)

    example = {k: torch.ones(2, 16, dtype=torch.long) for k in OV_INPUTS}
    with torch.no_grad():
        return ov.convert_model(Wrapped(hf).eval(), example_input=example,
                                input=[(k, [-1, -1], ov.Type.i64) for k in OV_INPUTS])


def _quantize(om, calibration: list[dict[str, np.ndarray]] | None):
    try:
        import nncf
    except ImportError as e:
        raise ValueError("backend openvino-int8 needs nncf: pip install 'pond[embed-int8]'") from e
    if not calibration:
        raise ValueError("backend openvino-int8: no calibration batches")
    return nncf.quantize(om, nncf.Dataset(calibration), preset=nncf.QuantizationPreset.MIXED,
                         model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration),
                         ignored_scope=nncf.IgnoredScope(patterns=list(FLOAT_LAYERS), validate=False))


def calibration_texts() -> list[str]:
    """The fixed calibration sample: the first CALIBRATION_TEXTS non-empty ShareGPT conversations."""
    try:
        from curation.ingest import records_from_dicts
        from curation.sources import iter_sharegpt

        df = records_from_dicts(list(iter_sharegpt(limit=2 * CALIBRATION_TEXTS)), source="sharegpt")
    except ImportError as e:
        raise ValueError("backend openvino-int8 calibrates on ShareGPT's first conversations: "
                         "pip install 'pond[data]'") from e
    return [t for t in df["text"].to_list() if t.strip()][:CALIBRATION_TEXTS]


def _save(om, xml: Path) -> None:
    """Written under a temporary name and moved, so a reader never sees half an IR."""
    import openvino as ov

    xml.parent.mkdir(parents=True, exist_ok=True)
    tmp = xml.with_name(f"model.{os.getpid()}.xml")
    ov.save_model(om, tmp, compress_to_fp16=False)
    tmp.with_suffix(".bin").replace(xml.with_suffix(".bin"))
    tmp.replace(xml)
