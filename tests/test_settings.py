"""The one dtype rule and the hardware record, on the CPUs this project meets (as /proc/cpuinfo texts)."""
from __future__ import annotations

import json
import logging

import pytest

from curation import settings

AMD_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 49
model name\t: AMD EPYC 7B12
flags\t\t: fpu sse sse2 avx avx2 fma bmi2

processor\t: 1
vendor_id\t: AuthenticAMD
"""
INTEL_BF16 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile
"""
ARM_BF16 = """processor\t: 0
Features\t: fp asimd evtstrm aes bf16 sve
CPU implementer\t: 0x41
"""


@pytest.fixture
def on_cpu(monkeypatch):
    """Pretend to run on the CPU a /proc/cpuinfo text describes (no GPU), with no instruction-set cap (a suite run
    capped to AVX2 to play the slowest CPU must not change what these tests pretend)."""
    def use(text: str) -> None:
        for cap in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"):
            monkeypatch.delenv(cap, raising=False)
        info = settings.parse_cpuinfo(text) | {"cores": 2}
        monkeypatch.setattr(settings, "cpu", lambda: info)
        monkeypatch.setattr(settings, "gpu", lambda: None)
        monkeypatch.setattr(settings, "_warned", set())
    return use


def test_cpuinfo_is_read_for_model_and_bf16_flags():
    amd, intel, arm = (settings.parse_cpuinfo(t) for t in (AMD_AVX2, INTEL_BF16, ARM_BF16))
    assert amd["model"] == "AMD EPYC 7B12" and amd["id"] == "cpu family 23 model 49" and "avx2" in amd["flags"]
    assert not settings.cpu_native_bf16(amd["flags"])
    assert settings.cpu_native_bf16(intel["flags"]) and settings.cpu_native_bf16(arm["flags"])


@pytest.mark.parametrize("text, auto", [(AMD_AVX2, "fp32"), (INTEL_BF16, "bf16"), (ARM_BF16, "bf16")])
def test_auto_follows_the_cpu_and_a_recipe_can_force(on_cpu, text, auto):
    on_cpu(text)
    assert settings.pick_dtype("auto", "cpu") == auto
    assert settings.pick_dtype("fp32", "cpu") == "fp32" and settings.pick_dtype("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="dtype must be one of auto, bf16, fp32"):
        settings.pick_dtype("fp16", "cpu")


def test_forced_bf16_without_native_bf16_runs_and_warns_once_with_the_measured_factor(on_cpu, caplog, capsys):
    on_cpu(AMD_AVX2)
    with caplog.at_level(logging.WARNING, logger="pond"):
        assert settings.pick_dtype("bf16", "cpu") == "bf16"
        assert settings.pick_dtype("bf16", "cpu") == "bf16"
    warnings = [r.getMessage() for r in caplog.records if "no native bf16" in r.getMessage()]
    assert len(warnings) == 1 and "8.1x slower" in warnings[0] and "AMD EPYC 7B12" in warnings[0]
    assert capsys.readouterr().err.count("warning: bf16 forced") == 1
    on_cpu(INTEL_BF16)
    caplog.clear()
    settings.pick_dtype("bf16", "cpu")
    assert not caplog.records  # native: nothing to warn about


def test_every_vllm_server_pond_starts_gets_the_rule(on_cpu, tmp_path):
    from synthesis import server

    def served(**kw):
        cmd = server.server_command(tmp_path / "python", tmp_path, 8001, "m", cpu=True, **kw)
        return cmd[cmd.index("--dtype") + 1]

    on_cpu(AMD_AVX2)
    assert served() == "float32" and served(dtype="bf16") == "bfloat16"
    on_cpu(INTEL_BF16)
    assert served() == "bfloat16" and served(dtype="fp32") == "float32"


def test_training_and_embeddings_use_the_rule(on_cpu):
    torch = pytest.importorskip("torch")
    from curation.embed import EmbeddingOptions, _precision
    from training.model import resolve_dtype

    on_cpu(AMD_AVX2)
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert _precision(EmbeddingOptions(), "cpu") == "fp32"
    on_cpu(INTEL_BF16)
    assert resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16
    assert _precision(EmbeddingOptions(), "cpu") == "bf16" and _precision(EmbeddingOptions(precision="fp32"), "cpu") == "fp32"


def test_the_recipe_serve_dtype_is_validated():
    from pydantic import ValidationError

    from synthesis.client import ServeSpec

    assert ServeSpec().dtype == "auto" and ServeSpec(dtype="fp32").dtype == "fp32"
    with pytest.raises(ValidationError):
        ServeSpec(dtype="float16")


def test_the_hardware_record_names_the_cpu_and_dtype(on_cpu):
    on_cpu(AMD_AVX2)
    rec = settings.hardware("fp32")
    assert rec["cpu"] == "AMD EPYC 7B12" and rec["cpu_cores"] == 2 and rec["cpu_flags"] == ["avx2"]
    assert rec["cpu_native_bf16"] is False and rec["gpu"] is None and rec["dtype"] == "fp32"
    assert json.loads(json.dumps(rec)) == rec
    assert settings.describe_cpu() == "AMD EPYC 7B12 (cpu family 23 model 49), 2 cores, bf16 emulated"


def test_this_machine_is_read():
    rec = settings.hardware()
    assert rec["cpu"] and rec["cpu_cores"] >= 1
    assert rec["cpu_native_bf16"] == settings.cpu_native_bf16()


def test_an_instruction_set_cap_turns_native_bf16_off(monkeypatch):
    # the slowest machine's code paths on a faster CPU: oneDNN capped at AVX2 emulates bf16
    monkeypatch.setattr(settings, "cpu", lambda: {"flags": {"avx2", "avx512_bf16"}})
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert settings.cpu_native_bf16()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert not settings.cpu_native_bf16()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert settings.cpu_native_bf16()
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert not settings.cpu_native_bf16()


def test_loading_and_wrapping_a_student_prints_no_library_bars_or_warnings(tiny_llama_dir):
    # In a process of its own: pytest records warnings and resets filters per test, a user's process does not.
    import subprocess
    import sys

    code = ("import sys; from peft import LoraConfig, get_peft_model; from training.model import load_student; "
            "model, _ = load_student(sys.argv[1], 'lora', compute_dtype='fp32'); "
            "get_peft_model(model, LoraConfig(r=2, target_modules=['q_proj']))")
    res = subprocess.run([sys.executable, "-c", code, str(tiny_llama_dir)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "Loading weights" not in res.stderr and "is_gradient_checkpointing" not in res.stderr, res.stderr
