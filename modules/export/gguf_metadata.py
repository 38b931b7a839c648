"""The GGUF metadata of a Hugging Face causal LM: architecture hyperparameters and the tokenizer.

llama.cpp (and Ollama, which runs it) reads a model's shape and its tokenizer from key-value pairs
in the GGUF header, under names fixed by the ``gguf`` package (``gguf.Keys``); the writer's
``add_*`` methods spell them. ``modules/export/gguf.py`` writes the tensors and checks the file.

Only byte-level BPE tokenizers (``tokenizer.json`` with a BPE model: Llama 3, SmolLM, Qwen) are
written; the vocabulary follows the model's ``vocab_size`` (ids the tokenizer lacks get llama.cpp's
``[PAD<id>]`` placeholders), and the token types mark special added tokens as control tokens.
"""

import json

import gguf
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2_SPLIT

# model_type → the gguf architecture; each writes the same hyperparameter keys.
SUPPORTED_ARCHITECTURES = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2,
                           "qwen3": gguf.MODEL_ARCH.QWEN3}

# The split regex of a tokenizer → llama.cpp's pre-tokenizer name (``tokenizer.ggml.pre``), which
# tells llama.cpp how to cut text before the merges. An unknown one falls back to "default".
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZER_BY_SPLIT = {QWEN2_SPLIT: "qwen2", LLAMA3_SPLIT: "llama-bpe"}


class GGUFExportError(RuntimeError):
    """The model or tokenizer cannot be written as a GGUF, or the written file is wrong."""


# 1. Architecture ----------------------------------------------------------------------------------
def gguf_architecture(config) -> gguf.MODEL_ARCH:
    """The gguf architecture of ``config``; a clear error for the ones this export cannot write."""
    if config.model_type not in SUPPORTED_ARCHITECTURES:
        raise GGUFExportError(
            f"cannot export model_type '{config.model_type}' ({', '.join(config.architectures or [])}) as GGUF: "
            f"supported are {', '.join(sorted(SUPPORTED_ARCHITECTURES))} (Llama, SmolLM, Qwen2/2.5, Qwen3). "
            "For others, use llama.cpp's convert_hf_to_gguf.py on the merged folder."
        )
    rope_type = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope_type != "default":
        raise GGUFExportError(f"rope scaling '{rope_type}' is not written by this export (only plain RoPE); "
                              "use llama.cpp's convert_hf_to_gguf.py for this model.")
    return SUPPORTED_ARCHITECTURES[config.model_type]


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def rope_theta(config) -> float:
    parameters = getattr(config, "rope_parameters", None) or {}
    return float(parameters.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def add_hyperparameters(writer: gguf.GGUFWriter, config, name: str) -> None:
    """Context length, widths, depth, heads, RoPE base, RMS-norm epsilon and vocabulary size."""
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim(config))  # llama: the rotated width of each head
    if head_dim(config) != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim(config))  # llama.cpp's name for a head width set on its own
        writer.add_value_length(head_dim(config))


# 2. Tokenizer -------------------------------------------------------------------------------------
def add_tokenizer(writer: gguf.GGUFWriter, tokenizer, vocab_size: int) -> dict:
    """Vocabulary, merges, token types, special ids and the chat template; returns the pre-tokenizer
    name and the merge count (a tokenizer without merges, like the tests' byte-level one, loads in
    transformers but not in llama.cpp, which requires the merges key)."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    if backend["model"]["type"] != "BPE" or not _is_byte_level(backend):
        raise GGUFExportError("only byte-level BPE tokenizers (Llama 3, SmolLM, Qwen) can be written as GGUF; "
                              f"this one is {backend['model']['type']}")
    tokens, token_types = vocabulary(tokenizer, vocab_size)
    pre_tokenizer = pre_tokenizer_name(backend)
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre(pre_tokenizer)
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in backend["model"]["merges"]]
    if merges:
        writer.add_token_merges(merges)
    else:  # GGUF has no empty arrays; with scores, transformers' loader derives the (no) merges itself
        writer.add_token_scores([0.0] * len(tokens))
    _add_special_ids(writer, tokenizer)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
    return {"pre_tokenizer": pre_tokenizer, "merges": len(merges)}


def vocabulary(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens by id up to the model's ``vocab_size``, and their llama.cpp types."""
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise GGUFExportError(f"the tokenizer has id {max(by_id)} but the model's vocab_size is {vocab_size}")
    added = tokenizer.added_tokens_decoder
    tokens, token_types = [], []
    for index in range(vocab_size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")  # an id the model has but the tokenizer never produces
            token_types.append(gguf.TokenType.USER_DEFINED)
            continue
        tokens.append(by_id[index])
        if index in added:
            token_types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            token_types.append(gguf.TokenType.NORMAL)
    return tokens, token_types


def pre_tokenizer_name(backend: dict) -> str:
    """llama.cpp's name for how this tokenizer cuts text before merging (see PRE_TOKENIZER_BY_SPLIT)."""
    steps = _pre_tokenizer_steps(backend.get("pre_tokenizer"))
    for step in steps:
        pattern = (step.get("pattern") or {}).get("Regex") if step["type"] == "Split" else None
        if pattern in PRE_TOKENIZER_BY_SPLIT:
            return PRE_TOKENIZER_BY_SPLIT[pattern]
    kinds = [step["type"] for step in steps]
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"  # SmolLM / SmolLM2: digits one by one, then GPT-2's split
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    return "default"


def _pre_tokenizer_steps(pre_tokenizer: dict | None) -> list[dict]:
    if pre_tokenizer is None:
        return []
    if pre_tokenizer["type"] == "Sequence":
        return pre_tokenizer["pretokenizers"]
    return [pre_tokenizer]


def _is_byte_level(backend: dict) -> bool:
    return any(step["type"] == "ByteLevel" for step in _pre_tokenizer_steps(backend.get("pre_tokenizer")))


def _add_special_ids(writer: gguf.GGUFWriter, tokenizer) -> None:
    """BOS/EOS/pad/unk ids, and whether the tokenizer puts BOS in front of a text by itself."""
    for token_id, add in [(tokenizer.bos_token_id, writer.add_bos_token_id),
                          (tokenizer.eos_token_id, writer.add_eos_token_id),
                          (tokenizer.pad_token_id, writer.add_pad_token_id),
                          (tokenizer.unk_token_id, writer.add_unk_token_id)]:
        if token_id is not None:
            add(token_id)
    ids = tokenizer("a").input_ids
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id])
    writer.add_add_eos_token(tokenizer.eos_token_id is not None and ids[-1:] == [tokenizer.eos_token_id])
