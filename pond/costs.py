"""What a run costs in time on this machine: per-unit costs measured on 2-core CPUs of this machine
kind, keyed by CPU class, so that `pond run --estimate` and the plan line of `pond run` can give a
time per stage.

The class follows the dtype rule (curation.settings.pick_dtype), because the dtype decides the speed:

- `cpu-bf16`: a CPU with native bf16 (AVX-512 BF16 / AMX): every part computes in bf16;
- `cpu-fp32`: a CPU without it (AVX2 only): every part computes in float32;
- a GPU: nothing was measured on one here, so stages get no time rather than a made-up one.

Every figure below names where it comes from; a curation step's rows per second stands beside the
step, in its line of pond/steps.py (`rows_per_s`). All were measured on 2 cores; a machine with more
cores is faster, which is not modelled (there the times are upper bounds). Teacher figures are
seconds per request at the demo's concurrency (writer 16, judge 8): the writer's per request as
`--estimate` counts them (so the demo's writing stage comes out as measured), the judge's per
request sent (`--estimate` counts an upper bound, so its judging time is one too). Sizes other than
the measured ones are scaled by rules (`by_size`, `student_scale`), not measurements.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

# Reference sizes the figures were measured at (recipes/quickstart.yaml)
REF_PARAMS = {"small": 135e6, "large": 1.5e9}  # SmolLM2-135M (writer, student), Qwen2.5-Coder-1.5B (judge)
REF_TOKENS_PER_STEP = 4 * 256                   # train: batch_size 4 x max_seq_len 256
REF_HELDOUT_ROWS = 60                           # evaluate: holdout n 60, n_generate 0


@dataclass(frozen=True)
class Costs:
    """Seconds per unit for one CPU class (see the module docstring for where each comes from)."""

    label: str
    ingest_rows_per_s: float          # ingest (the steps' rates are in pond/steps.py: `step_rows_per_s`)
    embed_s: float                    # one text through all-MiniLM-L6-v2 (256 tokens), cold cache
    serve_start_s: dict[str, float]   # start of a vLLM server: "small" (135M) and "large" (1.5B)
    request_s: dict[str, float]       # one teacher request as --estimate counts them
    train_step_s: dict[str, float]    # one training step of 4 x 256 tokens of the 135M student, by method
    train_load_s: float               # loading the student and writing the adapter, once per training run
    score_row_s: float                # one model's loss on one row of <= 256 tokens (held-out, reference), loads in
    ifd_pass_s: float                 # one forward pass of the `ifd` scorer (the 135M student) at 256 tokens
    generate_tok_s: float = 0.0       # benchmark answers: tokens/s of the merged-adapter vLLM server
    generation_start_s: float = 0.0   # merging an adapter and starting its server, once per model
    sources: tuple[str, ...] = field(default=())
    pace: float = 1.0                 # this machine's measured pace on the student's figures (pond/pace.py)

    def step_s(self, method: str) -> float:
        """A training step of `method`; a method not measured is charged the dearest measured one."""
        return self.train_step_s.get(method, max(self.train_step_s.values()))


def scaled_student(c: Costs, factor: float, **changes) -> Costs:
    """`c` with the student's compute (training, scoring, IFD, benchmark answers) `factor` times as slow: the
    figures one CPU's speed moves together (the AVX2-only EPYC against a capped core; this machine's pace)."""
    return dataclasses.replace(
        c, train_step_s={m: s * factor for m, s in c.train_step_s.items()}, train_load_s=c.train_load_s * factor,
        score_row_s=c.score_row_s * factor, ifd_pass_s=c.ifd_pass_s * factor, generate_tok_s=c.generate_tok_s / factor,
        generation_start_s=c.generation_start_s * factor, **changes)


# Ingest's rate, measured with the steps' (each step's figure is its `rows_per_s` in pond/steps.py, where
# the run it comes from is described): `pond run` of recipes/quickstart.yaml, 2,000 ShareGPT rows in 1.92 s.
INGEST_ROWS_PER_S = 1043.0


def slowest_rows_per_s() -> float:
    """A step with no measured rate is charged the slowest measured one (ingest's among them)."""
    from pond.steps import STEPS

    return min([INGEST_ROWS_PER_S] + [s.rows_per_s for s in STEPS.values() if s.rows_per_s is not None])


def step_rows_per_s(spec) -> float:
    """Rows per second of a step on the local executor: its measured rate, else the slowest measured one."""
    return spec.rows_per_s if spec.rows_per_s is not None else slowest_rows_per_s()


# A served teacher alone on both cores (`serve: {cpu_cores: all}`) against vLLM's default, which keeps one core
# for its front end: the demo's judge calibration round, 86.4 s against 156.4 s (bench/judge_speed.py, AMD EPYC
# family 25 model 17 with torch capped to AVX2, float32, 2026-12-07). The request costs below are the default's.
ALL_CORES_REQUEST = 86.4 / 156.4

# The AVX2-only EPYC (family 25 model 1) against a Zen 4 EPYC (family 25 model 17) with torch and oneDNN capped to
# AVX2 (ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2: float32 everywhere, as there): the demo's QLoRA training,
# 16 steps, 237 s there (issue 28) against 187 s capped, the same code. The AVX2-only EPYC was not lent since the
# student's training and scoring got faster, so those figures were measured capped and are scaled by this.
AVX2_OVER_CAPPED = 237 / 187

# `python bench/demo.py --runs 1` at f41f38e, native bf16 (AMD EPYC family 25 model 17, 2026-12-07; pond run 332 s):
NATIVE = {
    "embed_s": 46.4 / 594,  # embed_quality: 594 rows in 46.4 s, model load in, the judge's server starting beside it
    "judge_request_s": 33.4 / 12,  # the judge's calibration round on both cores (cpu_cores: all): 12 calls, 33.4 s
    "qlora_step_s": 42.1 / 8,  # training: 42.1 s in its 8 steps (the stage 47 s: 4.9 s loading, writing)
    "train_load_s": 47 - 42.1,
    "score_row_s": 67 / 128,  # evaluation: 67 s for base and adapter on 32 held-out + 32 reference rows each
}

CPU_BF16 = Costs(
    label="2-core CPU with native bf16",
    ingest_rows_per_s=INGEST_ROWS_PER_S,
    embed_s=NATIVE["embed_s"],
    serve_start_s={"small": 51.0, "large": 70.0},  # README demo table, AMD EPYC fam 25 model 17, 2026-12-02
    # the writer: docs/edge-cases.md (Intel, AMX, 2026-12-02), synthesize 151 s for the quickstart's 72 counted
    # requests; the judge: the demo's calibration round above, on vLLM's default cores (see ALL_CORES_REQUEST)
    request_s={"small": 151 / 72, "large": NATIVE["judge_request_s"] / ALL_CORES_REQUEST},
    train_step_s={"qlora": NATIVE["qlora_step_s"]},  # LoRA not measured here: charged as QLoRA (Costs.step_s)
    train_load_s=NATIVE["train_load_s"],
    ifd_pass_s=1 / (2 * 4.8),  # docs/quality_vs_quantity.md (Intel, bf16): IFD 4.8 rows/s, two passes a row
    score_row_s=NATIVE["score_row_s"],
    generate_tok_s=399.0, generation_start_s=25.3,  # bench/lora_generate.py, merged eager, bf16 (shared)
    sources=("`python bench/demo.py` at f41f38e (AMD EPYC family 25 model 17, 2 cores, AVX-512 BF16, 2026-12-07)",
             "README.md demo table (the same CPU, 2026-12-02): server starts",
             "docs/edge-cases.md figures (Intel Xeon family 6 model 167, 2 cores, AMX, 2026-12-02)",
             "curation steps measured 2026-12-06 (see pond/steps.py)"),
)

# Seconds measured capped to AVX2 (see AVX2_OVER_CAPPED) on 2026-12-07: `python bench/demo.py --runs 1` at 4c7b355
# (the quickstart: QLoRA, 8 steps) and `pond experiment recipes/quality_vs_quantity.yaml` at b431a26 (LoRA, 16 steps;
# 43.0 min in all, docs/quality_vs_quantity.md).
CAPPED = {
    "qlora_step_s": 65.3 / 8,  # the demo's training: 65.3 s in its 8 steps (the stage 72 s: 6.7 s loading, writing)
    "lora_step_s": 110.1 / 16,  # the recipe's curated arm, seed 0: 110.1 s in 16 steps
    "train_load_s": 72 - 65.3,
    # one model's loss on one row, its load in: the demo's evaluation 82 s for base and adapter on 32 held-out + 32
    # reference rows each (0.64 s a row), the recipe's reference scoring 480 s for 9 models x 100 rows (0.53)
    "score_row_s": (82 / 128 + 480 / 900) / 2,
    "ifd_pass_s": 65.0 / (2 * 204),  # the recipe's ifd step: 204 rows in 65.0 s, two passes a row, model load in
    # the recipe's IFEval answers: 5 models x 300 prompts, 147,161 tokens (SmolLM2's tokenizer) in 857 s, of which
    # ~38 s a model merging its adapter and starting its server (vLLM's "ready after" 27-32 s)
    "generate_tok_s": 147161 / (857 - 5 * 38),
    "generation_start_s": 38.0,
}

CPU_FP32 = scaled_student(Costs(
    label="2-core CPU without native bf16 (float32)",
    ingest_rows_per_s=INGEST_ROWS_PER_S,
    embed_s=73 / 1051,  # issue 28's demo (AMD EPYC fam 25 model 1, AVX2, 2026-12-06): embeddings 73 s;
    # the quickstart embeds 1,051 rows (the rows entering embed_quality in the run of the steps' rates)
    serve_start_s={"small": 63.0, "large": 100.0},  # issue 28: writer start 63 s, judge start 100 s
    request_s={"small": 185 / 72, "large": 651 / 54},  # issue 28: 24 edge cases (72 counted requests) 185 s;
    # judging 54 answers 651 s
    # the student's figures, measured capped, then scaled to the AVX2-only EPYC below
    train_step_s={"qlora": CAPPED["qlora_step_s"], "lora": CAPPED["lora_step_s"]},
    train_load_s=CAPPED["train_load_s"],
    score_row_s=CAPPED["score_row_s"],
    ifd_pass_s=CAPPED["ifd_pass_s"],
    generate_tok_s=CAPPED["generate_tok_s"],
    generation_start_s=CAPPED["generation_start_s"],
    sources=("issue 28's demo breakdown (AMD EPYC family 25 model 1, 2 cores, AVX2 only, 2026-12-06)",
             "training, scoring, IFD and benchmark answers measured capped to AVX2 on AMD EPYC family 25 model 17, "
             f"2026-12-07, x {AVX2_OVER_CAPPED:.2f} (pond/costs.py)",
             "curation steps measured 2026-12-06 (see pond/steps.py)"),
), AVX2_OVER_CAPPED)


def machine_costs() -> Costs | None:
    """This machine's class: None on a GPU (no figure measured there)."""
    from curation.settings import cpu_native_bf16, gpu

    if gpu():
        return None
    return CPU_BF16 if cpu_native_bf16() else CPU_FP32


def model_params(name: str | None) -> float | None:
    """Parameters from a model's name (`smollm2-135m-instruct` -> 135e6, `qwen2.5-coder-1.5b` -> 1.5e9)."""
    m = re.search(r"(?<![\d.])(\d+(?:\.\d+)?)([mb])(?![a-z])", (name or "").lower())
    if not m:
        return None
    return float(m.group(1)) * (1e6 if m.group(2) == "m" else 1e9)


def by_size(figures: dict[str, float], params: float | None) -> float:
    """A figure measured for the 135M and the 1.5B model, for a model of `params` parameters: linear
    in parameters through the two measured points (a rule, not a measurement); unknown size: the 1.5B's."""
    if params is None:
        return figures["large"]
    small, large = REF_PARAMS["small"], REF_PARAMS["large"]
    slope = (figures["large"] - figures["small"]) / (large - small)
    return max(figures["small"], figures["small"] + slope * (params - small))


def student_scale(student: str, batch_size: int, grad_accum: int, max_seq_len: int | None) -> float:
    """How much one step of this student costs against the measured one (135M, 4 x 256 tokens):
    proportional to tokens per step and to parameters (a rule, not a measurement)."""
    return batch_size * grad_accum * (max_seq_len or 512) / REF_TOKENS_PER_STEP * param_scale(student)


def param_scale(student: str) -> float:
    """How much this student's forward pass costs against the measured 135M one: proportional to parameters (a
    rule, not a measurement); a name without a size is charged as the 135M."""
    return (model_params(student) or REF_PARAMS["small"]) / REF_PARAMS["small"]
