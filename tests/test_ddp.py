"""Data parallelism on 2 CPU processes (gloo): the same training as one process, token for token.

A run on 2 ranks with micro-batch b takes, at each optimizer step, rank 0 the epoch's batch 2k and
rank 1 batch 2k+1 (``EpochBatchSampler``); one process accumulating 2 micro-batches of b takes the
very same two batches. With every token weighing the same whatever rank trains it (the step's
trained tokens summed over ranks, DDP's gradient averaging undone: core/step_loss.py), both runs
log the same step losses and end with the same weights. The ranks' answers differ in length, so a
rank dividing by its own token count would fail this.

``sft fit --trainer.strategy ddp`` relaunches its own command line once per extra rank, so the DDP
run is a subprocess; the one-process runs are in-process.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_app.main import main
from tests.factories import write_jsonl

# Answers of 1 to 4 sentences: the two ranks' batches hold different numbers of trained tokens.
RECORDS = [
    {"id": f"q{i}", "question": f"What is {i} plus {i}?", "answer": ("It is " + str(2 * i) + ". ") * (1 + i % 4)}
    for i in range(16)
]
MICRO_BATCH = 2  # 16 records: 8 batches an epoch, 4 per rank


@pytest.fixture
def ddp_config(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = {
        "seed_everything": 7,
        "trainer": {
            "accelerator": "cpu", "precision": "32-true", "max_steps": 2, "log_every_n_steps": 1,
            "enable_progress_bar": False, "enable_model_summary": False,
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": "runs", "name": "ddp"}},
        },
        "model": {
            "model_name_or_path": str(tiny_model_dir),
            "peft_config": {"class_path": "peft.LoraConfig", "init_args": {"r": 4, "lora_alpha": 8}},
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-2}},
            "lr_schedule": "constant",  # the first steps of a 2-step and a 4-step run are the same
        },
        "data": {"train_path": write_jsonl(tmp_path / "train.jsonl", RECORDS), "format": "qa",
                 "batch_size": MICRO_BATCH},
    }
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def fit_on_two_processes(config: str, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lightning_app", "fit", "--config", config,
               "--trainer.strategy", "ddp", "--trainer.devices", "2", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks on a small CPU
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def fit_in_process(config: str, name: str, *args: str) -> None:
    main(["fit", "--config", config, "--trainer.accumulate_grad_batches", "2",
          "--trainer.logger.init_args.name", name, *args])


def step_losses(run_dir: Path) -> list[float]:
    return [point.value for point in EventAccumulator(str(run_dir)).Reload().Scalars("train/loss_step")]


def adapter_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["state_dict"] and all("lora_" in key for key in checkpoint["state_dict"])  # adapters only
    return checkpoint["state_dict"]


def assert_same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=1e-5, msg=key)


def assert_resumes_in_one_process(config: str, checkpoint: Path, tmp_path: Path) -> Path:
    """A 2-step checkpoint resumed in one process to step 4 logs the last steps and reaches the weights
    of a one-process run of 4 steps; returns that run's folder."""
    fit_in_process(config, "resumed", "--trainer.max_steps", "4", "--ckpt_path", str(checkpoint))
    fit_in_process(config, "whole", "--trainer.max_steps", "4")
    resumed_dir, whole_dir = tmp_path / "runs" / "resumed" / "version_0", tmp_path / "runs" / "whole" / "version_0"
    assert step_losses(resumed_dir) == pytest.approx(step_losses(whole_dir)[2:], abs=1e-5)
    assert_same_weights(adapter_weights(resumed_dir), adapter_weights(whole_dir))
    return whole_dir


def test_ddp_on_two_processes_trains_as_one_process_and_checkpoints_cross_over(ddp_config, tmp_path):
    # 1. Two ranks with micro-batch 2, two steps: both exit 0, with a checkpoint and a summary.
    ddp = fit_on_two_processes(ddp_config)
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    ddp_dir = tmp_path / "runs" / "ddp" / "version_0"
    assert (ddp_dir / "summary.json").is_file() and (ddp_dir / "merged").is_dir()
    assert not (tmp_path / "runs" / "ddp" / "version_1").exists()  # rank 1 wrote no run folder of its own

    # 2. One process accumulating 2 micro-batches of 2: the same step losses and the same adapters.
    fit_in_process(ddp_config, "one")
    one_dir = tmp_path / "runs" / "one" / "version_0"
    ddp_losses, one_losses = step_losses(ddp_dir), step_losses(one_dir)
    assert len(ddp_losses) == len(one_losses) == 2
    assert ddp_losses == pytest.approx(one_losses, abs=1e-5)
    assert_same_weights(adapter_weights(ddp_dir), adapter_weights(one_dir))
    ddp_checkpoint = torch.load(ddp_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    one_checkpoint = torch.load(one_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ddp_checkpoint["tokens_seen"] == one_checkpoint["tokens_seen"]  # counted over every rank

    # 3. The DDP checkpoint resumed in one process trains on as a one-process run of 4 steps does.
    whole_dir = assert_resumes_in_one_process(ddp_config, ddp_dir / "checkpoints" / "last.ckpt", tmp_path)

    # 4. And the one-process checkpoint resumed on two ranks, too.
    on_two = fit_on_two_processes(ddp_config, "--trainer.logger.init_args.name", "on_two", "--trainer.max_steps", "4",
                                  "--ckpt_path", str(one_dir / "checkpoints" / "last.ckpt"))
    assert on_two.returncode == 0, on_two.stderr[-4000:]
    on_two_dir = tmp_path / "runs" / "on_two" / "version_0"
    assert step_losses(on_two_dir) == pytest.approx(step_losses(whole_dir)[2:], abs=1e-5)
    assert_same_weights(adapter_weights(on_two_dir), adapter_weights(whole_dir))


def test_ddp_validation_loss_is_the_one_process_loss_over_every_rank(ddp_config, tmp_path):
    """11 validation records in batches of 4: 3 batches, rank 1 repeats batch 0 to even the rounds.
    val/loss is summed over both ranks' batches (token-weighted), the repeat left out: one process's value."""
    config = yaml.safe_load(Path(ddp_config).read_text())
    config["data"].update(val_path=write_jsonl(tmp_path / "val.jsonl", RECORDS[:11]), eval_batch_size=4)
    Path(ddp_config).write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "lightning_app", "validate", "--config", ddp_config,
               "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.logger.init_args.name", "val_ddp"]
    ddp = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    main(["validate", "--config", ddp_config, "--trainer.logger.init_args.name", "val_one"])
    losses = [EventAccumulator(str(tmp_path / "runs" / name / "version_0")).Reload().Scalars("val/loss")[-1].value
              for name in ("val_ddp", "val_one")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
