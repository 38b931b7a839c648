"""4-bit (QLoRA) and 8-bit base weights with bitsandbytes, and the CUDA GPU they are run on here.

``model.quantization: 4bit`` loads the base as NF4 with double quantization and bfloat16 compute
(the QLoRA recipe); ``8bit`` loads it with LLM.int8(). Quantized weights cannot be trained, so
either one needs a ``peft_config`` (the adapter trains in full precision on top). Without a CUDA
GPU the run stops before anything is downloaded or loaded, with the setting to drop named; the
same goes for the bitsandbytes optimizers (``bitsandbytes.optim.AdamW8bit``, ``PagedAdamW``, ...).
"""

from typing import Literal, get_args

import torch
from peft import PeftModel, prepare_model_for_kbit_training
from transformers import BitsAndBytesConfig

Quantization = Literal["4bit", "8bit"]
QUANTIZATION_MODES: tuple[str, ...] = get_args(Quantization)


class NeedsCUDAError(RuntimeError):
    """A setting that runs only on a CUDA GPU was asked for on a machine without one."""


def require_cuda_for_quantization(quantization: str | None) -> None:
    """Stop early, with what to change, when a quantized base is asked for on a machine without CUDA."""
    if quantization is None:
        return
    if quantization not in QUANTIZATION_MODES:
        raise ValueError(f"model.quantization must be one of {QUANTIZATION_MODES} or null, got '{quantization}'")
    if not torch.cuda.is_available():
        raise NeedsCUDAError(
            f"model.quantization: {quantization}: 4-bit/8-bit loading needs a CUDA GPU (bitsandbytes); this "
            "machine has none — drop model.quantization or run on a GPU"
        )


def bitsandbytes_config(quantization: str | None) -> BitsAndBytesConfig | None:
    """The ``from_pretrained`` quantization config for ``4bit`` (QLoRA: NF4, double quantization,
    bfloat16 compute) or ``8bit`` (LLM.int8()); None for no quantization."""
    require_cuda_for_quantization(quantization)
    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.bfloat16)
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def prepare_for_kbit_training(model, gradient_checkpointing: bool):
    """peft's preparation of a quantized base before the adapter goes on: base frozen, norms and
    other unquantized weights in float32 (stable adapter training), input gradients enabled so
    gradient checkpointing (if asked for) still reaches the adapters."""
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)


def require_cuda_for_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """bitsandbytes optimizers are run on a CUDA GPU only: stop before the first step without one.

    (bitsandbytes 0.50 has CPU fallbacks, but paged optimizers lose their paging there and the
    8-bit states buy nothing on a CPU; torch.optim.AdamW is the CPU choice.)
    """
    optimizer_class = type(optimizer)
    if optimizer_class.__module__.split(".")[0] != "bitsandbytes" or torch.cuda.is_available():
        return
    raise NeedsCUDAError(
        f"model.optimizer: {optimizer_class.__module__}.{optimizer_class.__name__}: bitsandbytes optimizers need a "
        "CUDA GPU here; this machine has none — use torch.optim.AdamW or run on a GPU"
    )


def is_quantized(model) -> bool:
    """A 4/8-bit base (adapter or not): merging into it would requantize, so export and answering dequantize or stay unmerged."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return getattr(base.config, "quantization_config", None) is not None
