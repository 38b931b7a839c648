"""The shipped defaults train the model that plain settings train (issue 30): length grouping splits
each optimizer step's examples into micro-batches by length but keeps the step's examples those of
plain shuffling, and a warmup fraction gives transformers' (TRL's) number of warmup steps.

benchmarks/quality_vs_trl.py measures the same on SmolLM2 against TRL over seeds; this is its
guard on the tiny model."""

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from transformers import TrainingArguments

from datamodules.sft_datamodule import SFTDataModule
from modules.training.optimizer import warmup_steps
from tests.factories import quiet_trainer, sft_module, write_jsonl
from tests.tolerances import FLOAT64_FIT, assert_close_normwise, reordering_bound

# Answers from 1 to 12 sentences: micro-batches of plain shuffling mix lengths, and padding shows.
RECORDS = [{"id": f"r{i}", "question": f"Count to {i}?", "answer": " ".join(["one two three."] * (1 + (i * 5) % 12))}
           for i in range(16)]


class MicroBatches(Callback):
    """(row ids, padded tokens) of every training micro-batch, and the validation loss at the end."""

    def __init__(self):
        self.batches, self.val_loss = [], None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append((sorted(batch["row_index"].tolist()), batch["input_ids"].numel()))

    def on_validation_end(self, trainer, pl_module):
        self.val_loss = float(trainer.callback_metrics["val/loss"])


def fit(model_dir, tmp_path, precision: str, **data_options) -> tuple[MicroBatches, dict]:
    train = write_jsonl(tmp_path / "train.jsonl", RECORDS)
    val = write_jsonl(tmp_path / "val.jsonl", RECORDS[::3])
    module = sft_module(model_dir, optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3), lr_schedule="cosine",
                        warmup=0.25)
    seen = MicroBatches()
    torch.manual_seed(5)  # the samplers' seed
    data = SFTDataModule(train_path=train, val_path=val, format="qa", batch_size=2, eval_batch_size=4,
                         tokenizer_name_or_path=str(model_dir), **data_options)
    quiet_trainer(max_epochs=1, accumulate_grad_batches=2, precision=precision, callbacks=[seen]).fit(module, data)
    return seen, {name: p.detach().clone() for name, p in module.model.named_parameters()}


def steps(batches: list) -> list[list[int]]:
    """The examples of each optimizer step (2 micro-batches a step)."""
    return [sorted(batches[i][0] + batches[i + 1][0]) for i in range(0, len(batches), 2)]


@pytest.mark.numerics
@pytest.mark.parametrize("precision", ["64-true", "32-true"])
def test_length_grouping_by_default_trains_the_model_of_plain_shuffling(tiny_model_dir, tmp_path, precision):
    grouped, grouped_weights = fit(tiny_model_dir, tmp_path, precision)  # the defaults
    plain, plain_weights = fit(tiny_model_dir, tmp_path, precision, group_by_length=False)
    assert steps(grouped.batches) == steps(plain.batches)  # each step: the same examples
    assert [ids for ids, _ in grouped.batches] != [ids for ids, _ in plain.batches]  # in other micro-batches
    assert sum(tokens for _, tokens in grouped.batches) < sum(tokens for _, tokens in plain.batches)  # less padding
    if precision == "64-true":  # float64 reordering over 4 steps: ~1e-15; other steps' examples: 1e-2 (rule 1)
        torch.testing.assert_close(grouped.val_loss, plain.val_loss, **FLOAT64_FIT)
        for name, weight in grouped_weights.items():
            torch.testing.assert_close(weight, plain_weights[name], **FLOAT64_FIT, msg=name)
    else:  # float32: each of the 4 steps adds one forward/backward's reordering (tests/tolerances.py, rule 3)
        assert_close_normwise(torch.tensor(grouped.val_loss), torch.tensor(plain.val_loss),
                              4 * reordering_bound(torch.float32))


def test_wider_windows_group_the_step_differently(tiny_model_dir, tmp_path):
    """The option that trades the model for less padding really changes what a step sees."""
    wide, _ = fit(tiny_model_dir, tmp_path, "32-true", length_group_steps=4)
    plain, _ = fit(tiny_model_dir, tmp_path, "32-true", group_by_length=False)
    assert steps(wide.batches) != steps(plain.batches)
    assert sum(tokens for _, tokens in wide.batches) < sum(tokens for _, tokens in plain.batches)


@pytest.mark.parametrize("fraction, total", [(0.1, 12), (0.1, 30), (0.03, 100), (0.25, 7), (0.5, 1), (0.1, 50)])
def test_a_warmup_fraction_gives_transformers_warmup_steps(fraction, total, tmp_path):
    expected = TrainingArguments(output_dir=str(tmp_path), warmup_steps=fraction).get_warmup_steps(total)
    assert warmup_steps(fraction, total) == expected
    assert warmup_steps(0.1, 12) == 2  # int(1.2) would give 1: half of TRL's warmup


def test_a_window_below_one_step_is_refused():
    with pytest.raises(ValueError, match="data.length_group_steps must be at least 1"):
        SFTDataModule(length_group_steps=0, tokenizer_name_or_path="unused")
