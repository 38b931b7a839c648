"""Liger's fused Triton kernels swapped into a loaded model (``model.liger_kernels``), on CUDA GPUs.

RMSNorm, rotary embeddings and the SwiGLU MLP are each several elementwise PyTorch kernels that
read and write the activations again and again; Liger fuses each into one Triton kernel, which
saves memory traffic and activation memory on a GPU. The swap is per model instance (Liger's
``apply_liger_kernel_to_<family>(model=...)``) and changes no weight, so checkpoints, adapters and
merged exports are the same as without it.

Liger's fused linear cross-entropy (the LM head and the loss in chunks, never building the logits)
is left off on purpose: it replaces the model's ``forward`` with one that takes all positions'
labels, where the heads here pass ``logits_to_keep`` as a mask of the trained positions only
(``modules/heads/kept_logits.py``) — the answer-only positions are already the only ones whose
logits exist, and the choice head and letter scoring need logits or hidden states that a fused loss
never returns.

Triton kernels need a CUDA GPU, and Liger patches only the families it knows (Llama, Qwen2/3,
Mistral, Gemma, Phi-3 ...): anything else is refused before the model loads, naming the option,
rather than run silently unpatched.
"""

import torch

from modules.backbone.quantization import NeedsCUDAError

OPTION = "model.liger_kernels"
LIGER_SETTINGS = {"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False,
                  "fused_linear_cross_entropy": False}


def require_liger(enabled: bool) -> None:
    """Stops a run that asks for Liger where it cannot work, before any model is loaded."""
    if not enabled:
        return
    if not torch.cuda.is_available():
        raise NeedsCUDAError(f"{OPTION}: Liger's kernels are Triton kernels for CUDA GPUs and no GPU is visible; "
                           f"leave {OPTION} off on a CPU")
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError as error:
        raise ValueError(f"{OPTION} needs the liger-kernel package: pip install -e '.[liger]' ({error})") from error


def apply_liger_kernels(model) -> None:
    """Liger's RMSNorm, RoPE and SwiGLU in ``model`` (a transformers causal LM, before any PEFT wrapper)."""
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    model_type = getattr(model.config, "model_type", None)
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise ValueError(f"{OPTION}: Liger has no kernels for model type '{model_type}'; it supports "
                         f"{', '.join(sorted(MODEL_TYPE_TO_APPLY_LIGER_FN))}. Leave {OPTION} off for this model")
    MODEL_TYPE_TO_APPLY_LIGER_FN[model_type](model=model, **LIGER_SETTINGS)
