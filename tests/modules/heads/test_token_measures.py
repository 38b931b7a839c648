"""Mean token accuracy and entropy on the trained tokens, read from the LM head's kept logits: equal to
the same figures computed by hand from the model's full (batch, seq, vocab) logits."""

import torch
from peft import LoraConfig

from core.batch_layout import cells_of_examples
from core.constants import IGNORE_INDEX
from core.step_loss import trained_tokens_in
from modules.heads import MultiHead
from modules.heads.kept_logits import next_token_labels
from tests.factories import TYPED_RECORDS, sft_module, typed_batch
from tests.tolerances import reordering_bound


def by_hand(model, batch, without_choice_rows: bool = False) -> tuple[float, float]:
    """(accuracy, mean entropy) over every position whose next token is trained (by the LM: not in a
    choice record, for the multi head), from all the logits."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    targets = next_token_labels(batch["labels"])  # (batch, seq)
    trained = targets != IGNORE_INDEX
    if without_choice_rows:
        trained &= ~cells_of_examples(batch, batch["is_choice"])
    correct = (logits.argmax(-1) == targets)[trained]
    probabilities = logits.softmax(-1)[trained]  # (trained, vocab)
    entropy = -(probabilities * probabilities.log()).sum(-1)
    return float(correct.double().mean()), float(entropy.mean())


def test_training_and_evaluation_measures_equal_a_hand_computation(tiny_model_dir, tmp_path):
    module = sft_module(tiny_model_dir, peft_config=LoraConfig(r=4, lora_alpha=8, init_lora_weights=False))
    batch = typed_batch(tiny_model_dir, tmp_path, TYPED_RECORDS)
    accuracy, entropy = by_hand(module.model, batch)
    assert 0 < entropy  # a spread distribution: the comparison below can tell a wrong sum apart

    trained = trained_tokens_in(batch)
    batch["step_trained_tokens"] = torch.tensor(2 * trained)  # as if a second micro-batch of as many followed
    shares = module.head.training_loss(module.model, batch)
    assert round(float(shares["mean_token_accuracy"]) * 2 * trained) == round(accuracy * trained)  # the right count
    bound = reordering_bound(torch.float32)  # float32 softmax and sums against float64 (tests/tolerances.py)
    torch.testing.assert_close(float(shares["entropy"]), entropy / 2, rtol=bound, atol=0)

    values = module.head.evaluation(module.model, batch)
    assert values["mean_token_accuracy"].count == values["loss"].count == trained
    assert round(float(values["mean_token_accuracy"].value) * trained) == round(accuracy * trained)
    torch.testing.assert_close(float(values["entropy"].value), entropy, rtol=bound, atol=0)


def test_the_multi_head_measures_the_lm_rows_only(tiny_model_dir, tmp_path):
    module = sft_module(tiny_model_dir, head=MultiHead())
    batch = typed_batch(tiny_model_dir, tmp_path, TYPED_RECORDS)
    assert batch["is_choice"].any() and not batch["is_choice"].all()
    accuracy, entropy = by_hand(module.model, batch, without_choice_rows=True)
    lm_tokens = trained_tokens_in(batch, ~batch["is_choice"])
    shares = module.head.training_loss(module.model, batch)  # divided by the step's LM tokens: this batch's
    assert round(float(shares["mean_token_accuracy"]) * lm_tokens) == round(accuracy * lm_tokens)
    torch.testing.assert_close(float(shares["entropy"]), entropy, rtol=reordering_bound(torch.float32), atol=0)
