"""The step-loss agreement's guard: a trainer accumulating over another window than the loader read
ahead stops with an error instead of training on a wrong loss."""

import pytest
import torch
from lightning.pytorch.callbacks import GradientAccumulationScheduler

from core.step_loss import AccumulationMismatchError, check_window, step_divisor, undo_accumulation_scaling
from tests.factories import QA_RECORDS, qa_datamodule, quiet_trainer, sft_module, write_jsonl


def test_check_window_accepts_the_same_window_and_names_a_different_one():
    check_window({"step_window_capacity": torch.tensor(2)}, 2)
    with pytest.raises(AccumulationMismatchError, match="windows of 2 micro-batches but the trainer accumulates 4"):
        check_window({"step_window_capacity": torch.tensor(2)}, 4)


def test_divisor_is_at_least_one_and_scaling_is_undone():
    assert int(step_divisor({"step_choice_records": torch.tensor(0)}, "step_choice_records")) == 1
    with pytest.raises(KeyError, match="not a step divisor"):
        step_divisor({"labels": torch.tensor(0)}, "labels")
    assert float(undo_accumulation_scaling(torch.tensor(0.25), 4)) == 1.0


def test_an_accumulation_schedule_that_changes_mid_fit_is_refused(tiny_model_dir, tmp_path):
    train_path = write_jsonl(tmp_path / "train.jsonl", QA_RECORDS)
    trainer = quiet_trainer(max_epochs=2, callbacks=[GradientAccumulationScheduler({0: 1, 1: 2})])
    with pytest.raises(AccumulationMismatchError):
        trainer.fit(sft_module(tiny_model_dir), qa_datamodule(tiny_model_dir, train_path, batch_size=4))
    assert trainer.current_epoch == 1  # epoch 0 (window 1 = accumulation 1) trained; epoch 1 stopped at once
