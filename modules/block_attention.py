"""Causal attention as a few blocks of plain matmuls, keeping only the attention weights for backward.

Queries are cut into ``BLOCKS`` blocks along the sequence; block ``b`` attends to the keys up to its
own end, so the part of the (length x length) score matrix above the diagonal blocks is never
computed (3/4 of it is, with 2 blocks). Forward keeps each block's softmax output, in the dtype
the matmuls ran in (bf16 under bf16 autocast), and nothing else of the score matrix; backward is
four more matmuls per block and the softmax's gradient, ``P * (dP - rowsum(dO * O))``, the
identity flash attention's backward uses. Compiled with the decoder layer on 2 CPU cores
(SmolLM2's 9 query heads, 4 rows, bf16), forward and backward took 40 ms at 512 tokens against
58-68 ms for the CPU flash-attention kernel (SDPA), 12 against 21 at 256, 3.3 against 8-11 at
128, 2 against 5 at 64 (float32 at 512: 54 against 60).

``modules/training_attention.py`` decides when it runs (a memory budget for the kept weights).
"""

import torch

BLOCKS = 2  # 4 computed less (5/8 of the square) but took twice the compile time to trace


def block_bounds(length, blocks: int = BLOCKS) -> list[tuple]:
    """(start, end) of each query block; ``length`` may be symbolic under torch.compile."""
    return [(length * block // blocks, length * (block + 1) // blocks) for block in range(blocks)]


def kept_weight_entries(rows: int, heads: int, length: int, blocks: int = BLOCKS) -> int:
    """Entries of the attention weights one call keeps for backward, the diagonal blocks and below:
    (blocks + 1) / (2 blocks) of the square (exact when ``blocks`` divides ``length``, within a row
    per block otherwise). A polynomial of the length, so that compiled code guards on a simple
    expression."""
    return rows * heads * length * length * (blocks + 1) // (2 * blocks)


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype autocast multiplies ``tensor`` in (its own dtype without autocast)."""
    device_type = tensor.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else tensor.dtype


class BlockCausalAttention(torch.autograd.Function):
    """(rows, heads, length, head_dim) query, key and value (key/value heads already repeated), an
    optional boolean mask broadcastable to (rows, heads, length, length) that already holds the
    causal part (transformers' ``sdpa_mask``); None means causal only."""

    @staticmethod
    def forward(ctx, query, key, value, attention_mask, scaling: float):
        # Under autocast the inputs may differ (RoPE leaves query and key float32, value is bf16):
        # everything runs in the dtype autocast would multiply them in, backward too.
        ctx.input_dtypes = (query.dtype, key.dtype, value.dtype)
        query, key, value = (tensor.to(compute_dtype(query)) for tensor in (query, key, value))
        outputs, weights = [], []
        for start, end in block_bounds(query.shape[2]):
            scores = torch.matmul(query[:, :, start:end], key[:, :, :end].transpose(2, 3)).float() * scaling
            if attention_mask is None:
                hidden = torch.ones(end - start, end, dtype=torch.bool, device=query.device).triu(start + 1)
            else:
                hidden = attention_mask[..., start:end, :end].logical_not()
            # the float32 minimum, not -inf: a row with nothing to attend to (padding) gets uniform
            # weights instead of NaN, as in transformers' eager attention
            probabilities = torch.softmax(scores.masked_fill(hidden, torch.finfo(torch.float32).min), dim=-1)
            weights.append(probabilities.to(query.dtype))
            outputs.append(torch.matmul(weights[-1], value[:, :, :end]))
        output = torch.cat(outputs, dim=2)
        ctx.save_for_backward(query, key, value, output, *weights)
        ctx.scaling = scaling
        return output

    @staticmethod
    def backward(ctx, grad_output):
        query, key, value, output, *weights = ctx.saved_tensors
        grad_query = torch.empty_like(query)
        grad_key = torch.zeros(key.shape, dtype=torch.float32, device=key.device)
        grad_value = torch.zeros(value.shape, dtype=torch.float32, device=value.device)
        # (rows, heads, length, 1): the softmax gradient's row term, sum_j P_ij dP_ij = rowsum(dO * O)
        row_term = (grad_output.float() * output.float()).sum(-1, keepdim=True)
        for (start, end), probabilities in zip(block_bounds(query.shape[2]), weights):
            grad_block = grad_output[:, :, start:end].to(query.dtype)
            grad_value[:, :, :end] += torch.matmul(probabilities.transpose(2, 3), grad_block).float()
            grad_weights = torch.matmul(grad_block, value[:, :, :end].transpose(2, 3)).float()
            grad_scores = (probabilities.float() * (grad_weights - row_term[:, :, start:end]) * ctx.scaling)
            grad_scores = grad_scores.to(query.dtype)
            grad_query[:, :, start:end] = torch.matmul(grad_scores, key[:, :, :end])
            grad_key[:, :, :end] += torch.matmul(grad_scores.transpose(2, 3), query[:, :, start:end]).float()
        query_dtype, key_dtype, value_dtype = ctx.input_dtypes
        return grad_query.to(query_dtype), grad_key.to(key_dtype), grad_value.to(value_dtype), None, None
