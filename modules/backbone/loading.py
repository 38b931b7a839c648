"""Loading causal LMs: embedded aliases, local folders and hub names alike.

The tokenizer is loaded by ``core/tokenizer.py`` from the same resolved name, so the two never disagree.
"""

import tempfile
from typing import Any, Literal

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from core.embedded import resolve_model_path
from core.tokenizer import explain_load_error
from modules.backbone.quantization import bitsandbytes_config
from modules.backbone.weight_files import check_weight_files

Dtype = Literal["float32", "bfloat16", "float16", "auto"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def load_causal_lm(name_or_path: str, dtype: str = "float32", attn_implementation: str | None = None,
                   quantization: str | None = None, init_from_config: bool = False,
                   config_overrides: dict[str, Any] | None = None, trust_remote_code: bool = False,
                   compute_dtype: torch.dtype = torch.bfloat16):
    """The causal LM in ``dtype`` (float32, bfloat16, float16 or auto); with ``quantization``
    (``4bit`` or ``8bit``) its linear weights are quantized by bitsandbytes on the current GPU.
    With ``init_from_config`` its weights are random, in the architecture of its config.json.
    ``config_overrides`` replace settings of its config.json (``rope_scaling``, ``max_position_embeddings``).
    ``trust_remote_code`` runs Python files that come with the model (custom architectures): off
    unless asked, since that code runs with the user's rights. Weights are read from safetensors
    where the folder has them (transformers' default); a ``.bin``-only model is read with
    ``torch.load(weights_only=True)``, which transformers 5 always uses."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got '{dtype}'")
    quantization_config = bitsandbytes_config(quantization, compute_dtype)  # no kernels: stops before any download
    resolved = resolve_model_path(name_or_path)
    if not init_from_config:
        check_weight_files(resolved)  # a truncated file: one line naming it, not safetensors' own error
    try:
        config = model_config(resolved, config_overrides, trust_remote_code)
        if init_from_config:
            return random_causal_lm(resolved, dtype, attn_implementation, quantization_config, config)
        return AutoModelForCausalLM.from_pretrained(
            resolved, config=config, dtype=DTYPES[dtype], attn_implementation=attn_implementation,
            quantization_config=quantization_config, trust_remote_code=trust_remote_code,
            **quantized_placement(quantization_config),
        )
    except OSError as error:
        raise explain_load_error(name_or_path, "model", error) from error


def quantized_placement(quantization_config) -> dict:
    """Without CUDA, bitsandbytes quantizes while the weights are placed: ask for the CPU by name."""
    return {"device_map": {"": "cpu"}} if quantization_config is not None and not torch.cuda.is_available() else {}


def model_config(folder: str, overrides: dict[str, Any] | None = None, trust_remote_code: bool = False):
    """The folder's config with ``overrides`` applied. An object updates the config's object of that
    name rather than replacing it: ``rope_scaling: {rope_type: linear, factor: 2}`` keeps ``rope_theta``."""
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    if not overrides:
        return config
    unknown = sorted(key for key in overrides if not hasattr(config, key))
    if unknown:
        raise ValueError(
            f"model.config_overrides: {', '.join(map(repr, unknown))} is not a setting of {type(config).__name__} "
            f"(the model's config.json); its settings include {', '.join(sorted(config.to_diff_dict())[:12])} ..."
        )
    merged = {key: {**getattr(config, key), **value} if isinstance(value, dict) and isinstance(getattr(config, key), dict)
              else value for key, value in overrides.items()}
    return AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code, **merged)


def random_causal_lm(folder: str, dtype: str, attn_implementation: str | None, quantization_config=None,
                     config=None):
    """A causal LM with random weights (transformers' own initialisation, so ``seed_everything`` fixes
    them) in the architecture of ``folder``'s config.json; no weight file is read. For speed and
    memory benchmarks: the figures do not depend on the weights' values.

    bitsandbytes quantizes weights only while ``from_pretrained`` loads them, so a quantized random
    model is written once to a temporary folder and loaded back from there: the result is exactly
    what a quantized load of real weights gives (``Linear4bit`` layers, ``is_loaded_in_4bit``).
    """
    config = config if config is not None else AutoConfig.from_pretrained(folder)
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
                                                    quantization_config=quantization_config,
                                                    **quantized_placement(quantization_config))


def follow_tokenizer(model, tokenizer) -> None:
    """The model after a ``model.chat_template`` option changed its tokenizer: embeddings (and the
    output layer) grown to hold added tokens (new rows drawn around the old rows' mean and covariance,
    transformers' ``mean_resizing``), and EOS/pad ids taken from the tokenizer, so the merged export stops
    generating where training taught it to."""
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    for settings in (model.config, getattr(model, "generation_config", None)):
        if settings is not None:
            settings.eos_token_id = tokenizer.eos_token_id
            settings.pad_token_id = tokenizer.pad_token_id
