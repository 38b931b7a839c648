"""Preemption (SIGTERM → last.ckpt, exit 143, exact resume) and mid-epoch last.ckpt with a monitor."""

import os
import queue
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from callbacks.checkpoint import PREEMPTED_EXIT_CODE
from lightning_app.cli import SFTCLI
from lightning_app.main import main
from tests.factories import PreimportedProcess
from tests.test_cli import run_config  # noqa: F401  (the fixture: a tiny model, LoRA, 4 typed records)

pytestmark = pytest.mark.processes  # several ranks or a killed process: run alone (Makefile)


class SlowSteps(Callback):
    """Prints each optimizer step as it ends and sleeps, so a signal lands mid-fit."""

    def __init__(self, seconds: float = 0.3):
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        print(f"step {trainer.global_step}", flush=True)
        time.sleep(self.seconds)


class SigtermAtBatch(Callback):
    """Sends this process a SIGTERM at the end of one training batch (deterministic, in-process)."""

    def __init__(self, batch_idx: int):
        self.batch_idx = batch_idx

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.batch_idx and trainer.current_epoch == 0:
            os.kill(os.getpid(), signal.SIGTERM)


class LastCheckpointWatcher(Callback):
    """The global step of last.ckpt as each training batch starts: what a kill at that moment leaves."""

    def __init__(self):
        self.seen_steps: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        last = Path(trainer.checkpoint_callback.dirpath, "last.ckpt")
        if last.is_file():
            self.seen_steps.append(torch.load(last, map_location="cpu", weights_only=False)["global_step"])


def with_callbacks(run_config: str, name: str, *callbacks: dict, **trainer_settings) -> str:
    config = yaml.safe_load(Path(run_config).read_text())
    config["trainer"].update(trainer_settings, callbacks=list(callbacks))
    path = Path(run_config).with_name(f"{name}.yaml")
    path.write_text(yaml.safe_dump(config))
    return str(path)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _lines_of(process) -> queue.Queue:
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    return lines


def test_sigterm_saves_last_exits_and_resumes(run_config, tmp_path):
    slow = with_callbacks(run_config, "slow", {"class_path": "tests.test_preemption.SlowSteps"}, max_steps=1000)
    # `python -m lightning_app fit` in a process of its own, forked with its imports made (tests/factories.py);
    # stderr to a file: a full pipe would block the run's warnings
    process = PreimportedProcess(["-m", "lightning_app", "fit", "--config", slow], cwd=tmp_path, stdout_pipe=True,
                                 stderr_path=tmp_path / "stderr.txt")
    try:
        lines = _lines_of(process)
        while not lines.get(timeout=120).startswith("step 1"):
            pass
        process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        return_code = process.wait(timeout=30)
        seconds_to_exit = time.monotonic() - sent
    finally:
        process.kill()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert return_code == PREEMPTED_EXIT_CODE, stderr[-2000:]
    assert seconds_to_exit < 10
    print(f"SIGTERM to exit: {seconds_to_exit:.2f} s")
    checkpoints = tmp_path / "runs" / "tiny" / "fit" / "checkpoints"
    stopped_at = load(checkpoints / "last.ckpt")["global_step"]
    assert stopped_at >= 1
    assert f"stopped by SIGTERM at global step {stopped_at}; saved {Path('runs/tiny/fit/checkpoints/last.ckpt')}" \
        in stderr
    assert not list(checkpoints.glob("*.partial"))

    main(["fit", "--config", run_config, "--trainer.max_steps", str(stopped_at + 2), "--ckpt_path", "last"])
    resumed = load(checkpoints / "last.ckpt")
    assert resumed["global_step"] == stopped_at + 2  # continued from the saved step, in the same run directory
    assert {int(state["step"]) for state in resumed["optimizer_states"][0]["state"].values()} == {stopped_at + 2}
    assert not (tmp_path / "runs" / "tiny" / "fit_1").exists()


@pytest.mark.numerics
def test_a_sigterm_inside_an_accumulation_window_resumes_to_the_weights_of_an_uninterrupted_fit(run_config, tmp_path):
    """4 batches of 1, windows of 2: a SIGTERM after batch 2 (the first half of step 2's window)
    saves at step 1, and the resume replays batch 2 before finishing the epoch."""
    settings = ["--data.batch_size", "1", "--trainer.max_steps", "4", "--trainer.accumulate_grad_batches", "2"]
    main(["fit", "--config", run_config, *settings, "--trainer.logger.init_args.name", "straight"])
    killed = with_callbacks(run_config, "killed", {"class_path": "tests.test_preemption.SigtermAtBatch",
                                                   "init_args": {"batch_idx": 2}})
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--config", killed, *settings])
    assert stopped.value.code == PREEMPTED_EXIT_CODE
    checkpoints = tmp_path / "runs" / "tiny" / "fit" / "checkpoints"
    assert load(checkpoints / "last.ckpt")["global_step"] == 1

    main(["fit", "--config", run_config, *settings, "--ckpt_path", "last"])
    straight = load(tmp_path / "runs" / "straight" / "fit" / "checkpoints" / "last.ckpt")
    resumed = load(checkpoints / "last.ckpt")
    assert resumed["global_step"] == straight["global_step"] == 4
    for name, weight in straight["state_dict"].items():  # the same kernels in the same order: near-exact
        torch.testing.assert_close(resumed["state_dict"][name], weight, rtol=1e-6, atol=1e-7, msg=name)


def test_every_n_train_steps_writes_last_mid_epoch_with_a_validation_monitor(run_config):
    """The demo's monitor is val/loss, logged only at the epoch's end: last.ckpt must not wait for it."""
    watched = with_callbacks(run_config, "watched", {"class_path": "tests.test_preemption.LastCheckpointWatcher"})
    cli = SFTCLI(args=["fit", "--config", watched, "--data.batch_size", "1", "--trainer.max_steps", "4",
                       "--checkpoint.monitor", "val/loss", "--checkpoint.every_n_train_steps", "2"])
    watcher = next(callback for callback in cli.trainer.callbacks if isinstance(callback, LastCheckpointWatcher))
    assert watcher.seen_steps == [2, 2]  # written after step 2, read before batches 3 and 4
    assert load(Path(cli.trainer.checkpoint_callback.dirpath, "last.ckpt"))["global_step"] == 4


def test_the_early_last_save_leaves_the_monitored_saves_to_validation(run_config):
    """Validation every 2 steps: the top-k saves held for val/loss still happen at steps 2 and 4."""
    cli = SFTCLI(args=["fit", "--config", run_config, "--data.batch_size", "1", "--trainer.max_steps", "4",
                       "--trainer.val_check_interval", "2", "--checkpoint.monitor", "val/loss",
                       "--checkpoint.every_n_train_steps", "2", "--checkpoint.save_top_k", "-1"])
    checkpoints = Path(cli.trainer.checkpoint_callback.dirpath)
    assert sorted(path.name for path in checkpoints.iterdir()) == [
        "epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "last.ckpt"]
    scores = {Path(path).name: float(score) for path, score in cli.trainer.checkpoint_callback.best_k_models.items()}
    assert scores.keys() == {"epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt"}  # each ranked by its own val/loss
    assert scores["epoch=0-step=2.ckpt"] != scores["epoch=0-step=4.ckpt"]
