"""curation.embed on real text: fidelity to a plain sentence-transformers encode, the cache, tokenising."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from curation import embed, embed_kernels
from curation.embed import EmbeddingOptions, default_model_path, embed_texts


@pytest.fixture(scope="module")
def texts(sharegpt_df, fortunes_df) -> list[str]:
    # long conversations (truncated at 256 tokens) and short fortunes (little truncation, much padding)
    return sharegpt_df["text"].head(24).to_list() + fortunes_df["text"].sample(40, seed=1).to_list()


@pytest.fixture(scope="module")
def plain(texts) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(default_model_path()), device="cpu")
    return model.encode(texts, normalize_embeddings=True)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(default_model_path()))


def test_default_precision_matches_plain_encode(texts, plain, tmp_path):
    vecs = embed_texts(texts, EmbeddingOptions(), tmp_path)
    assert vecs.shape == plain.shape and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    cos = (vecs * plain).sum(1)
    assert cos.min() >= 0.99, f"min cosine {cos.min():.4f} to plain fp32 encode"


def test_fp32_is_the_plain_encode(texts, plain, tmp_path):
    vecs = embed_texts(texts, EmbeddingOptions(precision="fp32"), tmp_path)
    assert (vecs * plain).sum(1).min() >= 0.9999


def test_rerun_is_served_from_cache_without_the_model(texts, tmp_path):
    opts = EmbeddingOptions(max_seq_length=64)
    stats: dict = {}
    before = embed.counters["encoded"]
    first = embed_texts(texts, opts, tmp_path, stats=stats)
    assert embed.counters["encoded"] - before == len(set(texts)) == stats["encoded"]
    # a fresh process would have no model loaded: forget ours and count loads
    embed._load_model.cache_clear()
    loads, encoded = embed.counters["model_loads"], embed.counters["encoded"]
    again_stats: dict = {}
    again = embed_texts(list(reversed(texts)), opts, tmp_path, stats=again_stats)
    assert embed.counters["encoded"] == encoded and embed.counters["model_loads"] == loads
    assert again_stats["from_cache"] == len(set(texts)) and again_stats["encoded"] == 0
    np.testing.assert_array_equal(again, first[::-1])
    # another truncation length is another model key: encoded again
    embed_texts(texts[:3], EmbeddingOptions(max_seq_length=32), tmp_path)
    assert embed.counters["encoded"] == encoded + 3


def test_identical_texts_are_encoded_once(fortunes_df, tmp_path):
    rows = fortunes_df["text"].head(5).to_list()
    before = embed.counters["encoded"]
    vecs = embed_texts(rows + rows[::-1] + rows[:2], EmbeddingOptions(max_seq_length=64), tmp_path)
    assert embed.counters["encoded"] - before == len(set(rows))
    np.testing.assert_array_equal(vecs[:5], vecs[9:4:-1])


def test_cut_before_tokenising_keeps_tokens_exact(sharegpt_df, tokenizer):
    words = " ".join(sharegpt_df["text"].head(5).to_list())
    long_word = "x" * 3000
    cases = sharegpt_df["text"].head(60).to_list() + [
        long_word,  # no whitespace at all: the cut is unsafe, the whole text is tokenised
        words[:2040] + long_word,  # a word spanning the cut
        "word " * 2000,
        "ab" * 2000 + " end",
        "start" + " " * 3000 + "the words that count come after a long run of spaces",
        "{\n" + "    " * 600 + '"key": "value"}',  # deeply indented JSON, as in real ShareGPT rows
    ]
    for max_len in (16, 128, 256):
        ours = embed._tokenize(tokenizer, cases, max_len)
        full = tokenizer(cases, truncation=True, max_length=max_len)
        assert [r["input_ids"] for r in ours] == full["input_ids"]


def test_raw_tokenizer_gives_transformers_tokens_and_batches(sharegpt_df, fortunes_df, tokenizer):
    """#30: the OpenVINO backends tokenise with tokenizer.json alone (curation.embed_tokens): the same ids,
    masks and token types as transformers' fast tokenizer, cut and padded alike."""
    from curation.embed_tokens import RawTokenizer, model_settings

    raw = RawTokenizer(default_model_path())
    cases = (sharegpt_df["text"].head(40).to_list() + fortunes_df["text"].head(40).to_list()
             + ["", " ", "x" * 3000, "word " * 2000, "Ünïcödé — ∑ 数学 🙂 " * 50, "tab\tand\nnewline"])
    for max_len in (16, 256):
        ours, theirs = embed._tokenize(raw, cases, max_len), embed._tokenize(tokenizer, cases, max_len)
        assert ours == theirs
        idx = embed.longest_first(ours)[:17]
        a, b = embed._ov_feeds(raw, ours, idx), embed._ov_feeds(tokenizer, theirs, idx)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    settings = model_settings(default_model_path())
    assert settings["max_seq_length"] == 256 and settings["dim"] == 384 and settings["do_lower_case"] is False


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ValueError, match="not a sentence-transformers model folder"):
        embed_texts(["a"], EmbeddingOptions(model=str(tmp_path)), tmp_path)



class _Intermediate(nn.Module):  # BertIntermediate's shape
    def __init__(self, act: nn.Module):
        super().__init__()
        self.dense, self.intermediate_act_fn = nn.Linear(16, 64), act

    def forward(self, h):
        return self.intermediate_act_fn(self.dense(h))


class _Output(nn.Module):  # BertOutput's shape
    def __init__(self):
        super().__init__()
        self.dense, self.LayerNorm = nn.Linear(64, 16), nn.LayerNorm(16)

    def forward(self, h, residual):
        return self.LayerNorm(self.dense(h) + residual)


class _Block(nn.Module):
    def __init__(self, act: nn.Module):
        super().__init__()
        self.intermediate, self.output = _Intermediate(act), _Output()

    def forward(self, h):
        return self.output(self.intermediate(h), h)


@pytest.mark.skipif(not embed_kernels.available(), reason="no oneDNN in this torch build")
@pytest.mark.parametrize("act, gelu_fused", [(nn.GELU(), True), (nn.GELU(approximate="tanh"), True),
                                             (nn.ReLU(), False)])
def test_kernel_fusion_keeps_outputs_and_skips_what_it_cannot_match(act, gelu_fused):
    torch.manual_seed(0)
    block, x = _Block(act).eval(), torch.randn(3, 5, 16)
    with torch.inference_mode():
        before = block(x)
        swapped = embed_kernels.fuse(block)
        after = block(x)
    assert isinstance(block.intermediate.intermediate_act_fn, nn.Identity) == gelu_fused
    assert isinstance(block.output, embed_kernels.OneDnnOutput)
    assert swapped == 3  # the GELU linear or the plain one, the output block, and its inner linear
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


def _close_to_plain_under_own_key(opts, texts, plain, tmp_path, other):
    """A backend's vectors: within cosine 0.99 of a plain fp32 encode, cached under a key of their own."""
    vecs = embed_texts(texts, opts, tmp_path)
    cos = (vecs * plain).sum(1)
    assert cos.min() >= 0.99, f"min cosine {cos.min():.4f} to plain fp32 encode"
    key = embed.Embedder(opts).key
    assert key.endswith(f"-{opts.backend}") and key != embed.Embedder(other).key
    return vecs, key


def test_openvino_backend_matches_torch(texts, plain, tmp_path):
    """#30: backend openvino (converted offline from the local model, IR kept in the cache dir)
    gives vectors within cosine 0.99 of a plain fp32 encode, under its own cache key."""
    pytest.importorskip("openvino")
    opts = EmbeddingOptions(backend="openvino")
    vecs, key = _close_to_plain_under_own_key(opts, texts, plain, tmp_path, other=EmbeddingOptions())
    assert (tmp_path / "openvino" / key / "model.xml").is_file()
    # a second Embedder reads the saved IR instead of converting again, with the same vectors, and never
    # loads the torch model (its tokens come from tokenizer.json)
    loads = embed.counters["model_loads"]
    second = embed.Embedder(opts, tmp_path)
    again = second.encode(texts[:8])
    np.testing.assert_allclose(again, vecs[:8], atol=1e-6)
    assert second._model is None and embed.counters["model_loads"] == loads


@pytest.mark.slow  # ~35 s of NNCF calibration; the optional int8 backend (make test keeps plain openvino)
def test_openvino_int8_backend_quantises_once_and_stays_close(texts, plain, tmp_path, monkeypatch):
    """#30: backend openvino-int8 quantises the IR with NNCF on the fixed ShareGPT sample, keeps it under its
    own key, stays within cosine 0.99 of a plain fp32 encode, and a second process never calibrates again."""
    pytest.importorskip("nncf")
    from curation import embed_openvino

    opts = EmbeddingOptions(backend="openvino-int8")
    vecs, key = _close_to_plain_under_own_key(opts, texts, plain, tmp_path, other=EmbeddingOptions(backend="openvino"))
    xml = tmp_path / "openvino" / key / "model.xml"
    ops = {op.get_type_name() for op in __import__("openvino").Core().read_model(xml).get_ops()}
    assert "FakeQuantize" in ops, "the saved IR is not quantised"

    def no_calibration():
        raise AssertionError("calibrated again although the int8 IR is in the cache dir")

    monkeypatch.setattr(embed_openvino, "calibration_texts", no_calibration)
    again = embed.Embedder(opts, tmp_path).encode(texts[:8])
    np.testing.assert_allclose(again, vecs[:8], atol=1e-6)


@pytest.mark.slow
def test_model2vec_backend_distils_offline_and_caches(texts, tmp_path):
    """#30: backend model2vec distils a static model from the local MiniLM once (offline), keeps it
    under the cache dir and gives normalised 256-d vectors under its own cache key; a near-copy of a
    text is its nearest neighbour."""
    pytest.importorskip("model2vec")
    opts = EmbeddingOptions(backend="model2vec")
    near = [t + " ok" for t in texts[:4]]
    vecs = embed_texts(texts + near, opts, tmp_path)
    assert vecs.shape == (len(texts) + 4, embed.M2V_DIMS)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    key = embed.Embedder(opts).key
    assert "model2vec" in key and (tmp_path / "model2vec" / key / "config.json").is_file()
    sims = vecs[len(texts):] @ vecs[:len(texts)].T
    assert (sims.argmax(1) == np.arange(4)).all()
    encoded = embed.counters["encoded"]
    again = embed_texts(texts, opts, tmp_path)  # from the cache
    assert embed.counters["encoded"] == encoded
    np.testing.assert_array_equal(again, vecs[:len(texts)])
    # a later process reads the saved model and encodes as the one that distilled it did
    fresh = embed.Embedder(opts, tmp_path).encode(texts[:8])
    np.testing.assert_allclose(fresh, vecs[:8], atol=1e-6)


def test_default_backend_keeps_the_options_json():
    """The runner fingerprints the options' JSON: the default backend is left out of it (runs made
    before `backend` existed still resume); any other backend is in it and round-trips."""
    assert "backend" not in EmbeddingOptions().model_dump_json()
    ov = EmbeddingOptions(backend="openvino")
    assert '"backend":"openvino"' in ov.model_dump_json()
    assert EmbeddingOptions.model_validate(ov.model_dump()) == ov
