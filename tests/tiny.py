"""Tiny models and a byte-level ChatML tokenizer built in code: no downloads, hand-checkable ids.

Token ids: byte b has id b (so "hi" is [104, 105] and "\\n" is 10); the special tokens come after
the 256 bytes: <|im_start|> = 256, <|im_end|> = 257 (also EOS and pad, as in SmolLM2),
<|endoftext|> = 258.
"""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers.pre_tokenizers import ByteLevel
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

IM_START, IM_END, END_OF_TEXT = 256, 257, 258
VOCAB_SIZE = 260

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def byte_ids(text: str) -> list[int]:
    """The ids this tokenizer gives ``text``: its UTF-8 bytes."""
    return list(text.encode("utf-8"))


def build_tokenizer() -> PreTrainedTokenizerFast:
    byte_to_char = pre_tokenizers.ByteLevel.alphabet()  # 256 printable stand-ins for bytes
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {char: byte for byte, char in bytes_to_unicode().items()}
    assert len(vocab) == 256 and set(vocab) == set(byte_to_char)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]}
    )
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|im_end|>"
    tokenizer.chat_template = CHATML_TEMPLATE
    assert tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [IM_START, IM_END]
    return tokenizer


def build_base_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level, <|endoftext|> = 256 as EOS, no chat template and no ChatML tokens: a base model's."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {char: byte for byte, char in bytes_to_unicode().items()}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    tokenizer.add_special_tokens({"eos_token": "<|endoftext|>"})
    assert tokenizer.eos_token_id == 256 and tokenizer.chat_template is None
    return tokenizer


def build_model(architecture: str = "llama"):
    common = dict(
        vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        eos_token_id=IM_END, pad_token_id=IM_END, bos_token_id=None, tie_word_embeddings=False,
    )
    if architecture == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common))
    return LlamaForCausalLM(LlamaConfig(**common))


def save_tiny(folder: Path, architecture: str = "llama", seed: int = 0) -> Path:
    """A loadable Hugging Face folder (model + tokenizer) for ``model_name_or_path``."""
    import torch

    torch.manual_seed(seed)
    build_model(architecture).save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    return folder
