"""4-bit (QLoRA) and 8-bit base weights with bitsandbytes, on a CUDA GPU or a CPU whose kernels run.

``model.quantization: 4bit`` loads the base as NF4 with double quantization (the QLoRA recipe);
``8bit`` loads it with LLM.int8(). The 4-bit layers compute in the run's precision (bfloat16 under
``bf16-mixed``, as the recipe has it; float32 under ``32-true``, the choice on a CPU without bf16
instructions, where bf16 matmuls are ~300x slower). Quantized weights cannot be trained, so either
one needs a ``peft_config``. bitsandbytes 0.50 runs both on a CPU: before anything is downloaded or
loaded, a tiny quantized product is tried once there, and where it fails the run stops with one line
that says what is missing. The bitsandbytes optimizers (``bitsandbytes.optim.AdamW8bit``,
``PagedAdamW`` ...) run on a CPU too; paging needs CUDA, and the run says so instead of the library.
"""

import functools
from typing import Literal, get_args

import torch
from lightning.pytorch.utilities import rank_zero_warn
from peft import PeftModel, prepare_model_for_kbit_training
from transformers import BitsAndBytesConfig

Quantization = Literal["4bit", "8bit"]
QUANTIZATION_MODES: tuple[str, ...] = get_args(Quantization)


class NeedsCUDAError(RuntimeError):
    """A setting that runs only on a CUDA GPU was asked for on a machine without one (Liger's kernels)."""


class QuantizedKernelsMissingError(RuntimeError):
    """A bitsandbytes setting was asked for where bitsandbytes' kernels do not run."""


def require_quantized_kernels(quantization: str | None) -> None:
    """Stop early, with what to change, when a quantized base is asked for where bitsandbytes cannot run it."""
    if quantization is None:
        return
    if quantization not in QUANTIZATION_MODES:
        raise ValueError(f"model.quantization must be one of {QUANTIZATION_MODES} or null, got '{quantization}'")
    if torch.cuda.is_available():
        return
    failure = cpu_kernel_failure(quantization)
    if failure is not None:
        raise QuantizedKernelsMissingError(
            f"model.quantization: {quantization}: bitsandbytes' CPU kernels do not run on this machine ({failure}); "
            "drop model.quantization or run on a CUDA GPU"
        )


@functools.cache
def cpu_kernel_failure(quantization: str) -> str | None:
    """Why a tiny ``quantization`` product fails on the CPU (import, kernel, result), or None if it runs
    and matches float32 within what the format rounds (4-bit: ~10%, 8-bit: ~1% of the largest output).
    The global random state is left as it was: building the test layer draws from it, and a run's
    adapter initialisation after ``seed_everything`` must not depend on whether this ran before."""
    with torch.random.fork_rng(devices=[]):
        return _probe(quantization)


def _probe(quantization: str) -> str | None:
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as bnb_functional

        generator = torch.Generator().manual_seed(0)
        inputs, weight = torch.randn(4, 64, generator=generator), torch.randn(32, 64, generator=generator)
        if quantization == "4bit":
            packed, state = bnb_functional.quantize_4bit(weight, quant_type="nf4")
            outputs, allowed = bnb.matmul_4bit(inputs, packed.t(), quant_state=state), 0.25
        else:
            layer = bnb.nn.Linear8bitLt(64, 32, bias=False, has_fp16_weights=False)
            layer.weight = bnb.nn.Int8Params(weight.clone(), requires_grad=False, has_fp16_weights=False)
            outputs, allowed = layer.to("cpu")(inputs), 0.05
    except Exception as error:  # noqa: BLE001 (any failure of the library means: not here)
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": ")
    reference = inputs @ weight.t()
    error = float((outputs.float() - reference).abs().max() / reference.abs().max())
    return None if error <= allowed else f"a test product is off by {error:.2g} of its size"


def compute_dtype_for(precision: str | None) -> torch.dtype:
    """The 4-bit layers' compute dtype for the Trainer's precision: what its matmuls run in anyway."""
    if precision and precision.startswith("bf16"):
        return torch.bfloat16
    if precision and precision.startswith("16"):
        return torch.float16
    return torch.float32 if precision else torch.bfloat16  # no trainer (export, tools): the recipe's


def bitsandbytes_config(quantization: str | None, compute_dtype: torch.dtype = torch.bfloat16) -> BitsAndBytesConfig | None:
    """The ``from_pretrained`` quantization config for ``4bit`` (QLoRA: NF4, double quantization,
    ``compute_dtype``) or ``8bit`` (LLM.int8()); None for no quantization."""
    require_quantized_kernels(quantization)
    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def prepare_for_kbit_training(model, gradient_checkpointing: bool):
    """peft's preparation of a quantized base before the adapter goes on: base frozen, norms and
    other unquantized weights in float32 (stable adapter training), input gradients enabled so
    gradient checkpointing (if asked for) still reaches the adapters."""
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)


def check_bitsandbytes_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """A paged bitsandbytes optimizer on a machine without CUDA: say in one line that it runs unpaged
    (paging moves states between GPU and CPU memory; bitsandbytes falls back and warns per tensor)."""
    optimizer_class = type(optimizer)
    paged = optimizer_class.__module__.split(".")[0] == "bitsandbytes" and "Paged" in optimizer_class.__name__
    if paged and not torch.cuda.is_available():
        rank_zero_warn(f"model.optimizer: {optimizer_class.__name__} pages its states between GPU and CPU memory; "
                       "without a CUDA GPU it runs unpaged (the same updates, in ordinary memory)")


def is_quantized(model) -> bool:
    """A 4/8-bit base (adapter or not): merging into it would requantize, so export and answering dequantize or stay unmerged."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return getattr(base.config, "quantization_config", None) is not None
