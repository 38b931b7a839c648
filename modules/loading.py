"""Loading tokenizers and causal LMs: embedded aliases, local folders and hub names alike.

One function loads each, so the data module (tokenizer) and the model module (weights) can never
disagree about what a name means.
"""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from modules.embedded import resolve_model_path
from modules.quantization import bitsandbytes_config

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded; says what was tried and what to do."""


def _explain(name_or_path: str, what: str, error: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"could not load the {what} '{name_or_path}': {error}\n"
        "It is neither an embedded alias (e.g. smollm2-135m-instruct) nor a loadable local folder, and "
        "fetching it from the model hub failed. Without network access, download the model elsewhere and "
        "pass its local folder as --model.model_name_or_path."
    )


def load_tokenizer(name_or_path: str):
    """The tokenizer with its chat template; a missing pad token falls back to the EOS token."""
    resolved = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
    except OSError as error:
        raise _explain(name_or_path, "tokenizer", error) from error
    if tokenizer.chat_template is None:
        raise ModelLoadError(f"the tokenizer of '{name_or_path}' has no chat template; use a chat/instruct model")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name_or_path: str, dtype: str = "float32", attn_implementation: str | None = None,
                   quantization: str | None = None):
    """The causal LM in ``dtype`` (float32, bfloat16, float16 or auto); with ``quantization``
    (``4bit`` or ``8bit``) its linear weights are quantized by bitsandbytes on the current GPU."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got '{dtype}'")
    quantization_config = bitsandbytes_config(quantization)  # no CUDA: stops here, before any download
    resolved = resolve_model_path(name_or_path)
    try:
        return AutoModelForCausalLM.from_pretrained(
            resolved, dtype=DTYPES[dtype], attn_implementation=attn_implementation,
            quantization_config=quantization_config,
        )
    except OSError as error:
        raise _explain(name_or_path, "model", error) from error
