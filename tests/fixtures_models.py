"""Model fixtures built offline: a tiny random Llama with a chat-template tokenizer.

Nothing here downloads anything. The tokenizer is a byte-level BPE trained in a few milliseconds
on a fixed corpus (so every string tokenizes), with ChatML special tokens and a ChatML chat
template that, like SmolLM2's, has no `{% generation %}` markers. Model sizes are multiples of
32 so bitsandbytes' 4-bit CPU kernels accept every projection.
"""
from __future__ import annotations

from pathlib import Path

import pytest

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "what is the capital of france? paris is the capital of france.",
    "count to five: one two three four five",
    "reverse the word cat: tac. reverse the word dog: god.",
    "system user assistant you are a tiny test model",
    "hello, how can i help you today? thanks, goodbye!",
    "0123456789 + - * / = ( ) [ ] { } < > | : ; ' \" ` ~ ! @ # $ % ^ & _",
]


def build_tiny_tokenizer(vocab_size: int = 384):
    """Byte-level BPE with ChatML specials; vocabulary padded by the model, not here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llama(path: Path, *, hidden: int = 64, layers: int = 2, max_positions: int = 256,
                     seed: int = 0, init_std: float = 0.1) -> Path:
    """Save a random Llama (bf16, like the real student) and its tokenizer to `path`.

    `init_std` is larger than Llama's 0.02 so that the (frozen, tied) output head can express
    peaked distributions: LoRA then moves the loss clearly within a few steps.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer()
    vocab = -(-len(tok) // 32) * 32
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=hidden // 32, num_key_value_heads=1, head_dim=32,
        max_position_embeddings=max_positions, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        initializer_range=init_std,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A tiny random Llama folder (2 layers, hidden 64, vocab a multiple of 32, 256 positions)."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
