"""Loading tokenizers and causal LMs: embedded aliases, local folders and hub names alike.

One function loads each, so the data module (tokenizer) and the model module (weights) can never
disagree about what a name means.
"""

import tempfile

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

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
                   quantization: str | None = None, init_from_config: bool = False):
    """The causal LM in ``dtype`` (float32, bfloat16, float16 or auto); with ``quantization``
    (``4bit`` or ``8bit``) its linear weights are quantized by bitsandbytes on the current GPU.
    With ``init_from_config`` its weights are random, in the architecture of its config.json."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got '{dtype}'")
    quantization_config = bitsandbytes_config(quantization)  # no CUDA: stops here, before any download
    resolved = resolve_model_path(name_or_path)
    try:
        if init_from_config:
            return random_causal_lm(resolved, dtype, attn_implementation, quantization_config)
        return AutoModelForCausalLM.from_pretrained(
            resolved, dtype=DTYPES[dtype], attn_implementation=attn_implementation,
            quantization_config=quantization_config,
        )
    except OSError as error:
        raise _explain(name_or_path, "model", error) from error


def random_causal_lm(folder: str, dtype: str, attn_implementation: str | None, quantization_config=None):
    """A causal LM with random weights (transformers' own initialisation, so ``seed_everything`` fixes
    them) in the architecture of ``folder``'s config.json; no weight file is read. For speed and
    memory benchmarks: the figures do not depend on the weights' values.

    bitsandbytes quantizes weights only while ``from_pretrained`` loads them, so a quantized random
    model is written once to a temporary folder and loaded back from there: the result is exactly
    what a quantized load of real weights gives (``Linear4bit`` layers, ``is_loaded_in_4bit``).
    """
    config = AutoConfig.from_pretrained(folder)
    options = {"dtype": DTYPES[dtype]} if dtype != "auto" else {}  # unset: the config's own dtype, as "auto" means
    if attn_implementation is not None:  # unset: transformers' choice, as from_pretrained makes it
        options["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_config(config, **options)
    if quantization_config is None:
        return model
    with tempfile.TemporaryDirectory(prefix="random-weights-") as weights_dir:
        model.save_pretrained(weights_dir)
        del model
        return AutoModelForCausalLM.from_pretrained(weights_dir, dtype=DTYPES[dtype],
                                                    attn_implementation=attn_implementation,
                                                    quantization_config=quantization_config)
