"""The compiled LM loss gives transformers' loss and gradients: mean or divided by a token count,
labels shifted by it or given shifted, float32 or bf16 logits; and a compiled fit uses it."""

import pytest
import torch
from transformers.loss.loss_utils import ForCausalLMLoss

from core.constants import IGNORE_INDEX
from modules.backbone.loading import load_causal_lm
from modules.speed.compiled_loss import compile_loss, compiled_causal_lm_loss
from tests.tolerances import assert_close_normwise, reordering_bound

VOCAB = 300


def _logits_and_labels(dtype):
    torch.manual_seed(0)
    logits = (3 * torch.randn(2, 7, VOCAB)).to(dtype).requires_grad_()
    labels = torch.randint(0, VOCAB, (2, 7))
    labels[0, :3] = IGNORE_INDEX  # a prompt: not trained
    return logits, labels


def _loss_and_grad(loss_function, dtype, **kwargs):
    logits, labels = _logits_and_labels(dtype)
    loss = loss_function(logits, labels, VOCAB, **kwargs)
    loss.backward()
    return loss.detach(), logits.grad


@pytest.mark.numerics
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kwargs", [{}, {"num_items_in_batch": torch.tensor(5.0)}, {"num_items_in_batch": 5}])
def test_compiled_loss_equals_transformers_loss(dtype, kwargs):
    expected_loss, expected_grad = _loss_and_grad(ForCausalLMLoss, dtype, **kwargs)
    loss, grad = _loss_and_grad(compiled_causal_lm_loss, dtype, **kwargs)
    # Both upcast to float32: a log-sum-exp over VOCAB terms, a mean, and back (tests/tolerances.py, rule 2);
    # the gradient is then rounded to ``dtype`` once, by each in its own way: one eps of that dtype more.
    in_float32 = reordering_bound(torch.float32, terms=VOCAB, depth=4)
    assert_close_normwise(loss, expected_loss, in_float32)
    assert grad.dtype == dtype
    assert_close_normwise(grad, expected_grad, in_float32 + torch.finfo(dtype).eps)


def test_compiled_loss_takes_labels_already_shifted():
    """The heads pass the kept logits with their targets as ``shift_labels`` (no shift again)."""
    logits, labels = _logits_and_labels(torch.float32)
    kept = logits.detach()[0]  # (7, vocab): one row's logits, as a kept-logits head gives them
    loss = compiled_causal_lm_loss(kept, None, VOCAB, shift_labels=labels[1])
    expected = torch.nn.functional.cross_entropy(kept, labels[1])
    torch.testing.assert_close(loss, expected)
    # and the shift itself: position t is scored against label t + 1
    shifted = compiled_causal_lm_loss(logits.detach()[1:], labels[1:], VOCAB)
    torch.testing.assert_close(shifted, torch.nn.functional.cross_entropy(logits.detach()[1, :-1], labels[1, 1:]))


def test_a_compiled_model_computes_its_loss_with_it(tiny_model_dir):
    model = load_causal_lm(str(tiny_model_dir))
    input_ids = torch.randint(0, 256, (2, 9))
    expected = model(input_ids=input_ids, labels=input_ids).loss
    compile_loss(model)
    assert model.loss_function is compiled_causal_lm_loss
    torch.testing.assert_close(model(input_ids=input_ids, labels=input_ids).loss, expected)
