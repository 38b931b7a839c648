"""Causal attention as a few blocks of plain matmuls, keeping only the attention weights for backward.

Queries are cut into ``BLOCKS`` blocks along the sequence; block ``b`` attends to the keys up to its
own end, so the part of the (length x length) score matrix above the diagonal blocks is never
computed (3/4 of it is, with 2 blocks). Forward keeps each block's softmax output, in the dtype
the matmuls ran in (bf16 under bf16 autocast), and nothing else of the score matrix; rows and
heads are one batch dimension, so every product is a ``bmm`` (quicker for torch.compile to trace
than ``matmul`` on 4-d tensors: the Function's share of a run's first step 2.1 -> 1.3 s); backward is
four more matmuls per block and the softmax's gradient, ``P * (dP - rowsum(dO * O))``, the
identity flash attention's backward uses. Compiled with the decoder layer on 2 CPU cores
(SmolLM2's 9 query heads, 4 rows, bf16), forward and backward took 40 ms at 512 tokens against
58-68 ms for the CPU flash-attention kernel (SDPA), 12 against 21 at 256, 3.3 against 8-11 at
128, 2 against 5 at 64 (float32 at 512: 54 against 60).

``modules/speed/training_attention.py`` decides when it runs (a memory budget for the kept weights).
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
        ctx.shape = query.shape
        query, key, value = (_batched(tensor).to(compute_dtype(query)) for tensor in (query, key, value))
        if attention_mask is not None:
            attention_mask = attention_mask.expand(*ctx.shape[:2], -1, -1).flatten(0, 1)
        # each query block a tensor of its own: saved as slices of the query, inductor's backward
        # graph fixed a slice's stride to the first batch's length (and crashed on the next batch)
        bounds = block_bounds(query.shape[1])
        query_blocks = [query[:, start:end].contiguous() for start, end in bounds]
        outputs, weights = [], []
        for (start, end), query_block in zip(bounds, query_blocks):
            scores = torch.bmm(query_block, key[:, :end].transpose(1, 2)).float() * scaling
            if attention_mask is None:
                hidden = torch.ones(end - start, end, dtype=torch.bool, device=query.device).triu(start + 1)
            else:
                hidden = attention_mask[:, start:end, :end].logical_not()
            # the float32 minimum, not -inf: a row with nothing to attend to (padding) gets uniform
            # weights instead of NaN, as in transformers' eager attention
            probabilities = torch.softmax(scores.masked_fill(hidden, torch.finfo(torch.float32).min), dim=-1)
            weights.append(probabilities.to(query.dtype))
            outputs.append(torch.bmm(weights[-1], value[:, :end]))
        output = torch.cat(outputs, dim=1)
        ctx.save_for_backward(key, value, output, *query_blocks, *weights)
        ctx.scaling = scaling
        return output.view(ctx.shape)

    @staticmethod
    def backward(ctx, grad_output):
        key, value, output, *saved = ctx.saved_tensors
        query_blocks, weights = saved[:BLOCKS], saved[BLOCKS:]
        grad_output = _batched(grad_output)
        # (rows x heads, length, 1): the softmax gradient's row term, sum_j P_ij dP_ij = rowsum(dO * O)
        row_term = (grad_output.float() * output.float()).sum(-1, keepdim=True)
        bounds = block_bounds(key.shape[1])
        grad_query_blocks, grad_key, grad_value = [None] * len(bounds), None, None
        # the last block first: it reaches every key, so its key and value gradients start the sums
        for index in reversed(range(len(bounds))):
            (start, end), probabilities = bounds[index], weights[index]
            grad_block = grad_output[:, start:end].to(key.dtype)
            block_grad_value = torch.bmm(probabilities.transpose(1, 2), grad_block).float()
            grad_weights = torch.bmm(grad_block, value[:, :end].transpose(1, 2)).float()
            grad_scores = (probabilities.float() * (grad_weights - row_term[:, start:end]) * ctx.scaling)
            grad_scores = grad_scores.to(key.dtype)
            grad_query_blocks[index] = torch.bmm(grad_scores, key[:, :end])
            block_grad_key = torch.bmm(grad_scores.transpose(1, 2), query_blocks[index]).float()
            if grad_key is None:
                grad_key, grad_value = block_grad_key, block_grad_value
            else:
                grad_key[:, :end] += block_grad_key
                grad_value[:, :end] += block_grad_value
        grad_query = torch.cat(grad_query_blocks, dim=1)
        query_dtype, key_dtype, value_dtype = ctx.input_dtypes
        return (grad_query.view(ctx.shape).to(query_dtype), grad_key.view(ctx.shape).to(key_dtype),
                grad_value.view(ctx.shape).to(value_dtype), None, None)


def _batched(tensor: torch.Tensor) -> torch.Tensor:
    """(rows, heads, length, head_dim) as (rows x heads, length, head_dim): the blocks then run as
    ``bmm`` on 3-d slices. Under torch.compile this traces in half the time of ``matmul`` on 4-d
    slices, whose decomposition reshapes every symbolic-length slice (~1 s per run on 2 cores)."""
    return tensor.reshape(-1, *tensor.shape[2:])
