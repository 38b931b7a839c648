"""A run prints what the user can act on: third-party messages about the libraries' own internals
are silenced by name (lightning_app/quiet.py), a run without validation keeps its newest checkpoint
without a warning at each save, and in-process runs (sft demo's steps) are not told off for it."""

import logging
import warnings

import pytest

from lightning_app import quiet
from lightning_app.main import main
from tests.factories import QA_RECORDS, write_jsonl


def test_each_silenced_warning_and_log_line_is_dropped_and_nothing_else(caplog):
    quiet.install()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet.install()  # inside this block: the filters a run installs
        for category, start, _why in quiet.THIRD_PARTY_WARNINGS:
            warnings.warn(start + " and the rest of the message", category if category is not Warning else UserWarning)
        warnings.warn("a warning of ours", UserWarning)
    assert [str(w.message) for w in caught] == ["a warning of ours"]
    with caplog.at_level(logging.INFO):
        for logger_name, start, _why in quiet.THIRD_PARTY_LOG_LINES:
            logging.getLogger(logger_name).warning(start + " more")
            logging.getLogger(logger_name).warning("a line that stays")
    assert [record.getMessage() for record in caplog.records] == ["a line that stays"] * len(quiet.THIRD_PARTY_LOG_LINES)


def test_a_fit_without_validation_prints_nothing_to_skip(tiny_model_dir, tmp_path, capsys, recwarn):
    train = write_jsonl(tmp_path / "train.jsonl", QA_RECORDS)
    main(["fit", "--model.model_name_or_path", str(tiny_model_dir), "--data.format", "qa", "--data.train_path", train,
          "--data.batch_size", "4", "--trainer.max_steps", "2", "--trainer.accelerator", "cpu",
          "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--checkpoint.monitor", "val/loss",
          "--trainer.log_every_n_steps", "1", "--merge.enabled", "false"])
    printed = capsys.readouterr()
    messages = [str(w.message) for w in recwarn] + (printed.out + printed.err).splitlines()
    for noise in ("LightningCLI's args parameter", "could not find the monitored key", "Tip:", "loftq_config",
                  "is_gradient_checkpointing", "LeafSpec", "Total length of `list`", "TPU available",
                  "Loading `train_dataloader`"):
        assert not [m for m in messages if noise in m], noise
    assert "no validation file (data.val_path): checkpoints keep the newest, not the best by val/loss" in printed.out
    checkpoints = sorted(p.name for p in (tmp_path / "runs").glob("sft/fit/checkpoints/*.ckpt"))
    assert checkpoints == ["epoch=0-step=2.ckpt", "last.ckpt"]
