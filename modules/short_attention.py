"""Training attention on a CPU: plain matmul-softmax-matmul for short batches, SDPA for long ones.

PyTorch's CPU flash-attention kernel (what SDPA runs on a CPU) has a large fixed cost per call: for
4 rows of 107 tokens (SmolLM2's 9 query heads, 3 key/value heads) its forward and backward took
~8 ms, where the arithmetic is ~1 ms at the speed the same CPU multiplies matrices. Over 30 layers
that is ~0.2 s of a 0.6 s micro-batch. For short sequences, attention written as two matmuls and a
softmax, compiled with the layer, is cheaper; its cost is memory, the (rows, heads, length, length)
attention weights kept for the backward, which grows with the square of the length. So a batch
whose weights stay under ``SHORT_ELEMENTS`` entries per layer (~12 MB in float32 and bf16 together)
takes the plain path and a longer one SDPA's (which keeps no such matrix). Measured on 2 cores
(SmolLM2 LoRA, bf16, 64 bundled records, compiled layers): short micro-batches 15-25% faster,
long ones unchanged, peak memory unchanged; benchmarks/RESULTS.md.

Where it applies: a compiled fit (``modules/compiling.py``: the branch on the batch's shape becomes
a second graph, compiled once) on a CPU, of a model family whose attention is exactly this
(Llama, Qwen2, Qwen3, Mistral: no soft-capping, sinks or sliding windows), when the user left
``model.attn_implementation`` unset. Without gradients (validation loss, answering with a KV
cache) SDPA runs as before.
"""

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "sdpa_short_plain"
SHORT_ELEMENTS = 2 ** 21  # rows x heads x length x length of one layer's attention weights
PLAIN_ATTENTION_FAMILIES = {"llama", "qwen2", "qwen3", "mistral"}


def sdpa_or_plain_when_short(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, scaling: float | None = None,
                             dropout: float = 0.0, **kwargs):
    """transformers' attention-function signature; SDPA's boolean mask or None (causal)."""
    rows, heads, length, head_dim = query.shape
    if (not torch.is_grad_enabled() or dropout > 0 or key.shape[2] != length
            or rows * heads * length * length > SHORT_ELEMENTS):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * (scaling if scaling is not None else head_dim ** -0.5)
    allowed = attention_mask if attention_mask is not None else \
        torch.ones(length, length, dtype=torch.bool, device=query.device).tril()
    scores = scores.masked_fill(allowed.logical_not(), torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, sdpa_or_plain_when_short)
AttentionMaskInterface.register(NAME, sdpa_mask)


def use_plain_attention_when_short(model: nn.Module, device_type: str, user_choice: str | None) -> bool:
    """Switches ``model`` (a transformers causal LM, maybe PEFT-wrapped) to this attention where it
    applies (see the module docstring); returns whether it did."""
    config = model.config
    if (device_type != "cpu" or user_choice is not None or config._attn_implementation != "sdpa"
            or getattr(config, "model_type", None) not in PLAIN_ATTENTION_FAMILIES
            or getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)):
        return False
    config._attn_implementation = NAME
    return True
