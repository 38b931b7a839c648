"""Training attention on a CPU: causal blocks of plain matmuls within a memory budget, SDPA beyond.

PyTorch's CPU flash-attention kernel (what SDPA runs on a CPU) is slow for training at every
length: a fixed cost of ~8 ms per layer call even for 4 rows of 107 tokens (~1 ms of arithmetic),
and at 4 x 512 tokens 58 ms where the same CPU's matmuls need ~30. ``modules/speed/block_attention.py``
computes the same attention as two blocks of matmuls compiled with the layer, 1.5-4x faster. Its
cost is memory: it keeps the softmax output of the diagonal blocks and below for backward, which
grows with the square of the length. So a batch whose kept weights, over all layers, stay within
``KEPT_WEIGHTS_BYTES`` takes it, a longer one SDPA's (which keeps no such matrix). SmolLM2 LoRA
on 2 cores: 4 rows of up to 575 tokens fit the budget in bf16 (every micro-batch of the benchmark's
64 bundled records), up to 407 in float32; measured in benchmarks/RESULTS.md.

Where it applies: a compiled fit (``modules/speed/compiling.py``: the branch on the batch's shape becomes
a second graph, compiled once, only for a batch over the budget) on a CPU, of a model family whose
attention is exactly this (Llama, Qwen2, Qwen3, Mistral: no soft-capping, sinks or sliding windows),
when the user left ``model.attn_implementation`` unset. Without gradients (validation loss,
answering with a KV cache) SDPA runs as before.
"""

import torch
import torch._functorch.config
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from modules.speed.block_attention import BlockCausalAttention, compute_dtype, kept_weight_entries

NAME = "blocks_or_sdpa"
KEPT_WEIGHTS_BYTES = 512 * 2 ** 20  # attention weights kept for backward by all layers together
BLOCK_ATTENTION_FAMILIES = {"llama", "qwen2", "qwen3", "mistral"}


def blocks_in_budget_else_sdpa(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, scaling: float | None = None,
                             dropout: float = 0.0, **kwargs):
    """transformers' attention-function signature; SDPA's boolean mask or None (causal)."""
    rows, heads, length, head_dim = query.shape
    kept_bytes = (kept_weight_entries(rows, heads, length) * compute_dtype(query).itemsize
                  * module.config.num_hidden_layers)
    if not torch.is_grad_enabled() or dropout > 0 or key.shape[2] != length or kept_bytes > KEPT_WEIGHTS_BYTES:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    output = BlockCausalAttention.apply(query, repeat_kv(key, module.num_key_value_groups),
                                        repeat_kv(value, module.num_key_value_groups), attention_mask,
                                        scaling if scaling is not None else head_dim ** -0.5)
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, blocks_in_budget_else_sdpa)
AttentionMaskInterface.register(NAME, sdpa_mask)


def use_block_attention_in_budget(model: nn.Module, device_type: str, user_choice: str | None) -> bool:
    """Switches ``model`` (a transformers causal LM, maybe PEFT-wrapped) to this attention where it
    applies (see the module docstring); returns whether it did."""
    config = model.config
    if (device_type != "cpu" or user_choice is not None or config._attn_implementation != "sdpa"
            or getattr(config, "model_type", None) not in BLOCK_ATTENTION_FAMILIES
            or getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)):
        return False
    config._attn_implementation = NAME
    # A layer graph holding a custom autograd.Function is otherwise left out of AOTAutograd's cache,
    # and recompiled in every run (~13 s on 2 cores). Its key covers the Function's traced forward
    # and backward graphs, so an edit to them still misses the cache.
    torch._functorch.config.autograd_cache_allow_custom_autograd_functions = True
    return True
