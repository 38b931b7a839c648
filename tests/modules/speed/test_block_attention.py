"""Block-causal attention equals SDPA's causal attention, outputs and gradients, with and without a
padding mask, in float32 and bf16; and it keeps the diagonal blocks and below, no more."""

import pytest
import torch

from modules.speed.block_attention import BlockCausalAttention, block_bounds, kept_weight_entries
from tests.tolerances import assert_close_normwise, reordering_bound


def test_blocks_cover_the_sequence_and_keep_the_lower_part():
    assert block_bounds(8) == [(0, 4), (4, 8)]
    assert block_bounds(7) == [(0, 3), (3, 7)]
    # per row and head: 4x4 + 4x8 of the 8x8 scores
    assert kept_weight_entries(rows=3, heads=2, length=8) == 3 * 2 * 48
    assert kept_weight_entries(rows=1, heads=1, length=12) == 6 * 6 + 6 * 12


def _inputs(dtype, length=13):  # odd: blocks of 6 and 7
    torch.manual_seed(0)
    return [torch.randn(2, 3, length, 8, dtype=dtype, requires_grad=True) for _ in range(3)]


def _output_and_grads(attend, dtype, mask=None):
    query, key, value = _inputs(dtype)
    output = attend(query, key, value, mask)
    output.backward(torch.ones_like(output) + torch.arange(8, dtype=dtype))
    return [output.detach().float()] + [tensor.grad.float() for tensor in (query, key, value)]


def _sdpa(query, key, value, mask):
    if mask is None:
        return torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=True, scale=0.3)
    return torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=0.3)


def _blocks(query, key, value, mask):
    return BlockCausalAttention.apply(query, key, value, mask, 0.3)


# Softmax over 13 keys of 8-wide products, forward and backward: ~6 dependent sums (tests/tolerances.py, rule 2)
ONE_ATTENTION = reordering_bound(torch.float32, terms=13 * 8, depth=6)


@pytest.mark.numerics
def test_block_attention_equals_sdpa():
    for expected, actual, name in zip(_output_and_grads(_sdpa, torch.float32),
                                      _output_and_grads(_blocks, torch.float32), ("output", "query", "key", "value")):
        assert_close_normwise(actual, expected, ONE_ATTENTION, msg=name)


@pytest.mark.numerics
def test_block_attention_in_bf16_is_as_close_to_float32_as_bf16_allows():
    """bf16 keeps 8 bits of mantissa (0.4%); SDPA's own bf16 result is off by as much (0.3-0.7% here)."""
    reference = _output_and_grads(_sdpa, torch.float32)
    for expected, actual, name in zip(reference, _output_and_grads(_blocks, torch.bfloat16),
                                      ("output", "query", "key", "value")):
        assert (actual - expected).abs().max() <= 0.01 * expected.abs().max(), name


@pytest.mark.numerics
def test_block_attention_takes_a_padding_mask():
    """Left padding: the first 4 positions of row 0 are padding, attended by no one."""
    length = 13
    allowed = torch.ones(length, length, dtype=torch.bool).tril().repeat(2, 1, 1, 1)  # (2, 1, length, length)
    allowed[0, :, :, :4] = False
    allowed[0, :, :4, :4] = torch.eye(4, dtype=torch.bool)  # padding attends to itself only (no empty row)
    expected = _output_and_grads(_sdpa, torch.float32, allowed)
    actual = _output_and_grads(_blocks, torch.float32, allowed)
    for want, got, name in zip(expected, actual, ("output", "query", "key", "value")):
        assert_close_normwise(got, want, ONE_ATTENTION, msg=name)


def test_block_attention_under_autocast_takes_mixed_dtypes():
    """A bf16-mixed fit: RoPE leaves query and key float32, value comes out of a bf16 matmul; the
    backward runs outside autocast. Gradients come back in each input's dtype."""
    query, key, value = _inputs(torch.float32)
    value_bf16 = value.detach().bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = BlockCausalAttention.apply(query, key, value_bf16, None, 0.3)
    output.float().sum().backward()
    assert output.dtype == torch.bfloat16
    assert (query.grad.dtype, key.grad.dtype, value_bf16.grad.dtype) == (torch.float32, torch.float32, torch.bfloat16)
    # d(sum of outputs)/d(value) is the column sums of the weights: float32 reference to bf16 precision
    query_ref, key_ref, value_ref = _inputs(torch.float32)
    _sdpa(query_ref, key_ref, value_ref, None).sum().backward()
    assert (value_bf16.grad.float() - value_ref.grad).abs().max() <= 0.01 * value_ref.grad.abs().max()
    assert (query.grad - query_ref.grad).abs().max() <= 0.02 * query_ref.grad.abs().max()
