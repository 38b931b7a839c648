"""Padding-free packing and token-budget micro-batches.

A packed row of examples must train exactly as the examples one by one: the same logits at every
trained position, the same loss and gradients (and the same as the padded batch), the choice head
and letter scoring unchanged; no label crosses an example's boundary. Budget batches must respect
the budget, cover every example once an epoch, and redraw the same batches on resume.
"""

from functools import partial

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from peft import LoraConfig, PromptTuningConfig

from core.batch_layout import example_rows
from core.constants import IGNORE_INDEX
from core.step_loss import StepTokenCounts
from datamodules.collate import TrainingCollator
from datamodules.packing import PackedCollator, TokenBudgetBatchSampler
from datamodules.sft_datamodule import SFTDataModule
from modules.heads import LMHead, MultiHead
from modules.heads.kept_logits import forward_keeping, kept_rows, next_token_labels
from modules.heads.lm import letter_scored_rows, with_answer_positions
from tests.factories import QA_RECORDS, TYPED_RECORDS, qa_datamodule, quiet_trainer, sft_module, write_jsonl
from tests.tiny import IM_END, byte_ids
from tests.tolerances import FLOAT64_FIT, assert_close_normwise, assert_same_updates, reordering_bound

# One forward/backward of the tiny model, packed rows against padded ones or examples alone: the same sums
# in another order (tests/tolerances.py, rule 2).
ONE_PASS = reordering_bound(torch.float32)

CHOICES = [
    {"id": f"c{i}", "type": "choice", "prompt": f"{word} {i}?", "choices": dict(zip("ABCD", ["1", "2", "3", "4"][:n])),
     "answer": "ABCD"[i % n]}
    for i, (word, n) in enumerate([("alpha", 4), ("beta", 2), ("gamma", 3)])
]
MIXED = TYPED_RECORDS + CHOICES
METHODS = {  # (model fixture, peft config)
    "llama-full": ("tiny_model_dir", lambda: None),
    "qwen-full": ("tiny_qwen_dir", lambda: None),
    "llama-lora": ("tiny_model_dir", lambda: LoraConfig(r=4, lora_alpha=8, init_lora_weights=False)),
}


def training_examples(model_dir, tmp_path, records, format="typed") -> list[dict]:
    datamodule = SFTDataModule(train_path=write_jsonl(tmp_path / "records.jsonl", records), format=format,
                               tokenizer_name_or_path=str(model_dir))
    datamodule.setup("fit")
    examples = datamodule.training_examples("train").with_format(None)
    return [examples[i] for i in range(len(examples))]


def stamped(batch: dict, step_trained_tokens: int | None = None) -> dict:
    """One micro-batch a step; ``step_trained_tokens`` as if it shared its step with others."""
    batch = next(iter(StepTokenCounts([batch], 1)))
    if step_trained_tokens is not None:
        batch["step_trained_tokens"] = torch.tensor(step_trained_tokens)
    return batch


def padded(examples, **kwargs) -> dict:
    return stamped(TrainingCollator(IM_END)(examples), **kwargs)


def packed(examples, **kwargs) -> dict:
    return stamped(PackedCollator(IM_END)(examples), **kwargs)


def loss_and_grads(module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    loss = module.head.training_loss(module.model, batch)["loss"]
    loss.backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def kept_logits(module, batch) -> torch.Tensor:
    """(trained positions, vocab) logits, in order of the examples."""
    targets = next_token_labels(batch["labels"])
    with torch.no_grad():
        return forward_keeping(module.model, batch, targets != IGNORE_INDEX, targets).logits


# 1. A packed row trains as its examples one by one -----------------------------------------------
@pytest.mark.numerics
@pytest.mark.parametrize("method", METHODS)
def test_packed_batch_trains_exactly_as_its_examples_one_by_one(method, request, tmp_path):
    model_fixture, peft_config = METHODS[method]
    model_dir = request.getfixturevalue(model_fixture)
    module = sft_module(model_dir, peft_config=peft_config())
    examples = training_examples(model_dir, tmp_path, MIXED)
    whole = packed(examples)
    assert whole["input_ids"].shape == (1, sum(len(example["input_ids"]) for example in examples))
    step_tokens = int(whole["step_trained_tokens"])

    # Every trained position's logits, so every example's own loss, as when the example runs alone.
    alone_logits = [kept_logits(module, padded([example])) for example in examples]
    assert_close_normwise(kept_logits(module, whole), torch.cat(alone_logits), ONE_PASS)

    # The step's loss and gradients: the sum of the examples' shares, and those of the padded batch.
    packed_loss, packed_grads = loss_and_grads(module, whole)
    alone = [loss_and_grads(module, padded([example], step_trained_tokens=step_tokens)) for example in examples]
    padded_loss, padded_grads = loss_and_grads(module, padded(examples))
    assert_close_normwise(packed_loss, sum(loss for loss, _ in alone), ONE_PASS)
    assert_close_normwise(packed_loss, padded_loss, ONE_PASS)
    assert packed_grads.keys() == padded_grads.keys() and packed_grads
    for name, grad in packed_grads.items():
        summed_alone = sum(grads[name] for _, grads in alone)
        assert_close_normwise(grad, summed_alone, ONE_PASS, msg=name)
        assert_close_normwise(grad, padded_grads[name], ONE_PASS, msg=name)


def test_without_isolation_the_examples_would_see_each_other(tiny_model_dir, tmp_path):
    """The check above has teeth: the same row with plain positions (one long sequence) differs."""
    module = sft_module(tiny_model_dir)
    whole = packed(training_examples(tiny_model_dir, tmp_path, TYPED_RECORDS))
    run_on = {"input_ids": whole["input_ids"], "attention_mask": torch.ones_like(whole["input_ids"]),
              "labels": whole["labels"]}
    assert (kept_logits(module, whole) - kept_logits(module, run_on)).abs().max() > 1e-2


# 2. Labels and positions, by hand ---------------------------------------------------------------
def test_packed_labels_train_each_answer_and_its_eos_and_never_cross_a_boundary(tiny_model_dir, tmp_path):
    records = [{"id": "a", "question": "hi", "answer": "yo"}, {"id": "b", "question": "2+2?", "answer": "4"}]
    first, second = training_examples(tiny_model_dir, tmp_path, records, format="qa")
    batch = PackedCollator(IM_END)([first, second])
    first_length = len(first["input_ids"])
    assert batch["input_ids"][0].tolist() == first["input_ids"] + second["input_ids"]
    assert batch["position_ids"][0].tolist() == list(range(first_length)) + list(range(len(second["input_ids"])))
    assert "attention_mask" not in batch
    labels = batch["labels"][0].tolist()
    trained = [(position, label) for position, label in enumerate(labels) if label != IGNORE_INDEX]
    newline = byte_ids("\n")
    assert [label for _, label in trained] == byte_ids("yo") + [IM_END] + newline + byte_ids("4") + [IM_END] + newline
    assert trained[2] == (first_length - 2, IM_END)  # the first answer's EOS, at its own place
    # The answer positions (last prompt token) index the one row.
    assert batch["answer_position"].tolist() == [first["answer_position"], first_length + second["answer_position"]]
    assert batch["input_ids"][0, batch["answer_position"][1] + 1] == byte_ids("4")[0]


def test_each_examples_first_token_is_no_target_even_when_trained():
    """Full-sequence labels: the first token of the second example would be predicted from the last
    token of the first; it is -100, as the first position of a padded row is never a target."""
    examples = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7], "answer_position": 0, "id": "x", "record_type": "qa",
                 "row_index": 0},
                {"input_ids": [8, 9], "labels": [8, 9], "answer_position": 0, "id": "y", "record_type": "qa",
                 "row_index": 1}]
    batch = stamped(PackedCollator(0)(examples))
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9]]
    assert int(batch["step_trained_tokens"]) == 3 == int(padded(examples)["step_trained_tokens"])
    assert int(batch["step_tokens"]) == 5 and batch["seq_idx"].tolist() == [[0, 0, 0, 1, 1]]


# 3. The choice head and letter scoring ----------------------------------------------------------
@pytest.mark.numerics
def test_choice_head_and_letter_scoring_are_the_same_packed_and_padded(tiny_model_dir, tmp_path):
    module = sft_module(tiny_model_dir, head=MultiHead(), peft_config=LoraConfig(r=4, init_lora_weights=False))
    examples = training_examples(tiny_model_dir, tmp_path, MIXED)
    by_layout = {"packed": packed(examples), "padded": padded(examples)}
    with torch.no_grad():
        parts = {name: module.head._parts(module.model, batch, score_letters=True) for name, batch in by_layout.items()}
        evaluation = {name: module.head.evaluation(module.model, batch) for name, batch in by_layout.items()}
        training = {name: module.head.training_loss(module.model, batch) for name, batch in by_layout.items()}
        letter_logits = {name: letter_logits_at_answers(module, batch) for name, batch in by_layout.items()}
    assert parts["packed"].option_logits.shape == (len(CHOICES) + 1, 5)
    assert_close_normwise(parts["packed"].option_logits, parts["padded"].option_logits, ONE_PASS)
    assert_close_normwise(letter_logits["packed"], letter_logits["padded"], ONE_PASS)
    assert evaluation["packed"].keys() == evaluation["padded"].keys() >= {"letter_accuracy", "choice_accuracy"}
    for name, value in evaluation["packed"].items():
        assert value.count == evaluation["padded"][name].count, name
        assert_close_normwise(value.value, evaluation["padded"][name].value, ONE_PASS, msg=name)
    for name, value in training["packed"].items():
        assert_close_normwise(value, training["padded"][name], ONE_PASS, msg=name)
    lm_head = LMHead()
    lm_head.setup(module.model, module.tokenizer)
    with torch.no_grad():
        lm_evaluation = {name: lm_head.evaluation(module.model, batch) for name, batch in by_layout.items()}
    for name in ("loss", "letter_accuracy"):
        assert_close_normwise(lm_evaluation["packed"][name].value, lm_evaluation["padded"][name].value, ONE_PASS,
                              msg=name)


def letter_logits_at_answers(module, batch) -> torch.Tensor:
    """(scored records, vocab) LM logits at the labelled choice records' answer positions."""
    targets = next_token_labels(batch["labels"])
    scored = letter_scored_rows(batch)
    keep = with_answer_positions(targets != IGNORE_INDEX, batch, scored)
    logits = forward_keeping(module.model, batch, keep, targets).logits
    rows = scored.nonzero().squeeze(-1)
    return logits[kept_rows(keep, example_rows(batch)[rows], batch["answer_position"][rows])]


# 4. Token-budget micro-batches -------------------------------------------------------------------
LENGTHS = [int(n) for n in torch.randint(3, 60, (97,), generator=torch.Generator().manual_seed(5))] + [150]


def tokens_of(batch: list[int], packed_rows: bool) -> int:
    lengths = [LENGTHS[i] for i in batch]
    return sum(lengths) if packed_rows else len(lengths) * max(lengths)


@pytest.mark.parametrize("packed_rows", [True, False], ids=["packed", "padded"])
def test_token_budget_batches_fit_the_budget_and_cover_every_example_once(packed_rows):
    sampler = TokenBudgetBatchSampler(LENGTHS, max_tokens=128, seed=3, packed=packed_rows)
    for epoch in range(2):
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for batch in batches for i in batch) == list(range(len(LENGTHS)))
        for batch in batches:
            assert tokens_of(batch, packed_rows) <= 128 or batch == [len(LENGTHS) - 1]  # the 150-token one, alone
    assert [len(batch) for batch in batches].count(1) < len(batches) / 2  # budgets are really filled
    if packed_rows:  # best-fit-decreasing fills the budget: few batches beyond the lower bound
        assert len(batches) <= sum(LENGTHS) / 128 + 3


def test_token_budget_batches_are_drawn_from_the_seed_and_epoch_and_resume_mid_epoch():
    def epochs(seed, count=2):
        sampler = TokenBudgetBatchSampler(LENGTHS, 128, seed, packed=True)
        return [list(sampler) for _ in range(count)]

    first, again = epochs(seed=3), epochs(seed=3)
    assert first == again and first[0] != first[1]  # deterministic; a new order each epoch
    assert epochs(seed=4)[0] != first[0]
    resumed = TokenBudgetBatchSampler(LENGTHS, 128, 11, packed=True)  # the checkpoint's seed wins
    resumed.load_state_dict({"seed": 3})
    resumed.resume_at(epoch=1, batches_done=5)
    assert list(resumed) == first[1][5:]


def test_token_budget_batches_split_across_ranks():
    whole = list(TokenBudgetBatchSampler(LENGTHS, 128, 3, packed=True))
    shares = [list(TokenBudgetBatchSampler(LENGTHS, 128, 3, packed=True, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == len(whole) // 2
    assert shares[0] == whole[0::2][: len(whole) // 2] and shares[1] == whole[1::2][: len(whole) // 2]


# 5. End to end ---------------------------------------------------------------------------------
class StepLosses(Callback):
    def __init__(self):
        self.losses, self.val_losses = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if "train/loss" in trainer.callback_metrics and len(self.losses) < trainer.global_step:
            self.losses.append(float(trainer.callback_metrics["train/loss"]))

    def on_validation_end(self, trainer, pl_module):  # the module logs its means at the epoch's end
        self.val_losses.append(float(trainer.callback_metrics["val/loss"]))


def fit_losses(model_dir, tmp_path, precision="32-true", **data_options) -> tuple[StepLosses, dict]:
    train_path = write_jsonl(tmp_path / "train.jsonl", QA_RECORDS)
    val_path = write_jsonl(tmp_path / "val.jsonl", QA_RECORDS[:5])
    module = sft_module(model_dir, optimizer=partial(torch.optim.SGD, lr=0.5), lr_schedule="constant")
    losses = StepLosses()
    trainer = quiet_trainer(max_epochs=2, accumulate_grad_batches=2, callbacks=[losses], check_val_every_n_epoch=1,
                            precision=precision)
    torch.manual_seed(7)  # the batch sampler's seed
    trainer.fit(module, qa_datamodule(model_dir, train_path, batch_size=2, val_path=val_path, eval_batch_size=3,
                                      **data_options))
    return losses, {name: p.detach().clone() for name, p in module.model.named_parameters()}


@pytest.mark.numerics
@pytest.mark.parametrize("precision", ["64-true", "32-true"])
def test_fit_with_padding_free_gives_the_same_step_losses_as_padded(tiny_model_dir, tmp_path, precision):
    padded_run, padded_weights = fit_losses(tiny_model_dir, tmp_path, precision)
    packed_run, packed_weights = fit_losses(tiny_model_dir, tmp_path, precision, padding_free=True)
    assert len(packed_run.losses) == len(padded_run.losses) == 4  # 2 epochs of 4 micro-batches, 2 a step
    assert padded_run.losses[0] != padded_run.losses[-1]  # it trained
    if precision == "64-true":  # float64 reordering over 4 steps: ~1e-15; a layout bug: 1e-4 or more (rule 1)
        torch.testing.assert_close(packed_run.losses, padded_run.losses, **FLOAT64_FIT)
        torch.testing.assert_close(packed_run.val_losses, padded_run.val_losses, **FLOAT64_FIT)
        for name, weight in packed_weights.items():
            torch.testing.assert_close(weight, padded_weights[name], **FLOAT64_FIT, msg=name)
        return
    # float32: each of the 4 steps adds one forward/backward's reordering (rule 3); on the updates, norm-wise
    four_steps = 4 * ONE_PASS
    assert_close_normwise(torch.tensor(packed_run.losses), torch.tensor(padded_run.losses), four_steps)
    assert_close_normwise(torch.tensor(packed_run.val_losses), torch.tensor(padded_run.val_losses), four_steps)
    initial = {name: p.detach() for name, p in sft_module(tiny_model_dir).model.named_parameters()}
    assert_same_updates(packed_weights, padded_weights, initial, four_steps)


def qa_datamodule_examples(model_dir, tmp_path):
    datamodule = qa_datamodule(model_dir, str(tmp_path / "train.jsonl"), batch_size=2)
    datamodule.setup("fit")
    return datamodule.training_examples("train")


def test_fit_with_a_token_budget_takes_the_samplers_batches(tiny_model_dir, tmp_path):
    run, _ = fit_losses(tiny_model_dir, tmp_path, padding_free=True, max_tokens_per_batch=160)
    lengths = [len(ids) for ids in qa_datamodule_examples(tiny_model_dir, tmp_path)["input_ids"]]
    micro_batches = len(TokenBudgetBatchSampler(lengths, 160, 7, packed=True))
    assert 1 < micro_batches < len(lengths) and len(run.losses) == 2 * -(-micro_batches // 2)


def test_prompt_learning_methods_are_refused_with_padding_free(tiny_model_dir, tmp_path):
    module = sft_module(tiny_model_dir, peft_config=PromptTuningConfig(num_virtual_tokens=3))
    datamodule = qa_datamodule(tiny_model_dir, write_jsonl(tmp_path / "train.jsonl", QA_RECORDS), batch_size=2,
                               padding_free=True)
    refusal = "data.padding_free: true cannot be used with model.peft_config PromptTuningConfig"
    with pytest.raises(ValueError, match=refusal):
        quiet_trainer(max_steps=1).fit(module, datamodule)


def test_neftune_is_refused_with_padding_free(tiny_model_dir, tmp_path):
    module = sft_module(tiny_model_dir, neftune_alpha=5.0)
    datamodule = qa_datamodule(tiny_model_dir, write_jsonl(tmp_path / "train.jsonl", QA_RECORDS), batch_size=2,
                               padding_free=True)
    with pytest.raises(ValueError, match="data.padding_free: true cannot be used with model.neftune_alpha"):
        quiet_trainer(max_steps=1).fit(module, datamodule)


def test_a_token_budget_below_one_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="data.max_tokens_per_batch must be at least 1"):
        SFTDataModule(max_tokens_per_batch=0, tokenizer_name_or_path=str(tiny_model_dir))
