"""LM logits only at trained positions: the same loss and gradients as transformers' full-logit
loss, for plain models and every kind of PEFT method (virtual tokens in front, as a cache, AdaLoRA's
regulariser), while the LM head sees only the trained rows."""

import pytest
import torch
from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig

from core.constants import IGNORE_INDEX
from core.step_loss import trained_tokens_in
from modules.heads import LMHead, MultiHead
from modules.heads.kept_logits import kernel_attention_mask
from modules.peft.wrapping import AdaLoraConfig
from tests.factories import TYPED_RECORDS, sft_module, typed_batch
from tests.tolerances import assert_close_normwise, reordering_bound

ONE_PASS = reordering_bound(torch.float32)  # one forward/backward of the tiny model (tests/tolerances.py)

PEFT_CONFIGS = {
    "full": lambda: None,
    "lora": lambda: LoraConfig(r=4, lora_alpha=8, init_lora_weights=False),  # B ≠ 0: the adapter matters
    "prompt": lambda: PromptTuningConfig(num_virtual_tokens=3),  # 3 positions in front of the input
    "prefix": lambda: PrefixTuningConfig(num_virtual_tokens=3),  # virtual keys/values, positions unchanged
    "adalora": lambda: AdaLoraConfig(init_r=4, target_r=2, orth_reg_weight=0.5, total_step=10),  # + regulariser
}


def full_logit_loss(model, batch, labels, divisor=None):
    """transformers' own loss over (batch, seq, vocab) logits: the reference."""
    extra = {"num_items_in_batch": divisor} if divisor is not None else {}
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels, **extra).loss


def trainable_grads(module, loss) -> dict[str, torch.Tensor]:
    module.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.requires_grad and p.grad is not None}


def lm_head_rows(module, run) -> list[int]:
    """How many positions the LM head projected to the vocabulary during ``run()``."""
    seen = []
    hook = module.model.get_output_embeddings().register_forward_hook(
        lambda layer, inputs, output: seen.append(inputs[0].reshape(-1, inputs[0].shape[-1]).shape[0]))
    try:
        run()
    finally:
        hook.remove()
    return seen


@pytest.mark.numerics
@pytest.mark.parametrize("method", PEFT_CONFIGS)
def test_training_loss_and_gradients_equal_the_full_logit_loss(method, tiny_model_dir, tmp_path):
    module = sft_module(tiny_model_dir, peft_config=PEFT_CONFIGS[method]())
    batch = typed_batch(tiny_model_dir, tmp_path, TYPED_RECORDS)
    batch["step_trained_tokens"] = batch["step_trained_tokens"] * 3  # as if 2 more micro-batches followed

    ours = module.head.training_loss(module.model, batch)["loss"]
    expected = full_logit_loss(module.model, batch, batch["labels"], divisor=batch["step_trained_tokens"])
    # logits at the trained positions only against all logits: the same sums in another order (rule 2)
    assert_close_normwise(ours.detach(), expected.detach(), ONE_PASS)
    ours_grads = trainable_grads(module, module.head.training_loss(module.model, batch)["loss"])
    expected_grads = trainable_grads(module, full_logit_loss(module.model, batch, batch["labels"],
                                                             divisor=batch["step_trained_tokens"]))
    assert ours_grads.keys() == expected_grads.keys() and ours_grads
    for name, grad in ours_grads.items():
        assert_close_normwise(grad, expected_grads[name], ONE_PASS, msg=name)


def test_the_lm_head_projects_only_the_trained_positions(tiny_model_dir, tmp_path):
    module = sft_module(tiny_model_dir, peft_config=PromptTuningConfig(num_virtual_tokens=3))
    batch = typed_batch(tiny_model_dir, tmp_path, TYPED_RECORDS)
    trained = trained_tokens_in(batch)
    assert 0 < trained < batch["attention_mask"].sum() / 3  # answer-only training: a small share of the tokens
    assert lm_head_rows(module, lambda: module.head.training_loss(module.model, batch)) == [trained]


@pytest.mark.numerics
def test_evaluation_loss_is_the_token_mean_and_letters_are_scored_at_the_answer(tiny_model_dir, tmp_path):
    module = sft_module(tiny_model_dir, head=LMHead())
    batch = typed_batch(tiny_model_dir, tmp_path, TYPED_RECORDS)
    with torch.no_grad():
        values = module.head.evaluation(module.model, batch)
        expected = full_logit_loss(module.model, batch, batch["labels"])
        rows = lm_head_rows(module, lambda: module.head.evaluation(module.model, batch))
    assert_close_normwise(values["loss"].value, expected, ONE_PASS)  # kept against all logits (rule 2)
    assert values["loss"].count == trained_tokens_in(batch)
    # The choice record's answer position is the position before its first trained token, so it is
    # already kept: scoring letters adds no extra row.
    assert rows == [trained_tokens_in(batch)]
    assert "letter_accuracy" in values


@pytest.mark.numerics
def test_multi_head_lm_loss_covers_non_choice_rows_with_their_logits_only(tiny_model_dir, tmp_path):
    module = sft_module(tiny_model_dir, head=MultiHead())
    batch = typed_batch(tiny_model_dir, tmp_path, TYPED_RECORDS)
    lm_labels = batch["labels"].masked_fill(batch["is_choice"][:, None], IGNORE_INDEX)
    divisor = batch["step_lm_tokens"]
    with torch.no_grad():
        parts = module.head.training_loss(module.model, batch)
        expected = full_logit_loss(module.model, batch, lm_labels, divisor=divisor)
        rows = lm_head_rows(module, lambda: module.head.training_loss(module.model, batch))
    assert_close_normwise(parts["lm_loss"], expected, ONE_PASS)  # kept against all logits (rule 2)
    assert rows == [int(divisor)]  # the choice row's answer letter is the classifier's job: no LM logits


@pytest.mark.parametrize(("method", "dropped"), [("full", True), ("lora", True), ("adalora", True),
                                                  ("prompt", False), ("prefix", False)])
def test_right_padded_rows_go_to_the_kernel_without_a_padding_mask(method, dropped, tiny_model_dir, tmp_path):
    """A causal model needs no padding mask for right-padded rows (the padding comes after every real
    token); the loss above equals transformers' masked one. Virtual tokens keep the mask."""
    module = sft_module(tiny_model_dir, peft_config=PEFT_CONFIGS[method]())
    batch = typed_batch(tiny_model_dir, tmp_path, TYPED_RECORDS)
    assert not batch["attention_mask"].all()  # rows of different lengths: there is padding
    assert (kernel_attention_mask(module.model, batch) is None) == dropped
    left_padded = {"attention_mask": batch["attention_mask"].flip(1)}
    assert kernel_attention_mask(module.model, left_padded) is left_padded["attention_mask"]
