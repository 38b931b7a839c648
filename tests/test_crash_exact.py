"""A fit SIGKILLed at random moments (in a training step, in validation, while a checkpoint is
written) and resumed from ``last`` each time ends where an uninterrupted fit ends: the same weights,
Adam state and global step, with LoRA dropout on (so the random state must travel in checkpoints).

8 steps over 2 epochs of 4 one-record batches, validation every 2 steps, ``last.ckpt`` every step.
The killed fit runs as ``python -m lightning_app fit`` in a process of its own (forked with its
imports made: tests/factories.py); a test callback prints a line at each moment worth killing in and
pauses briefly there, and a test checkpoint writer writes each file in two halves with a pause
between, so a kill can land mid-write. The killed fits and the uninterrupted one run the same kernels
in the same order (one process, the same batches), so their weights and Adam state agree near-exactly.
"""

import io
import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_app.main import main
from tests.factories import TYPED_RECORDS, PreimportedProcess, start_preimporting, write_jsonl

pytestmark = pytest.mark.processes  # several ranks or a killed process: run alone (Makefile)

# The issue asks for 10 kills; each restart costs a fit's setup (~3 s on 2 busy cores, the imports
# made once by the fork server), so the suite runs 4 and SFT_CRASH_KILLS=10 runs the full count
# (checked: 10 survived, docs/training.md).
KILLS = int(os.environ.get("SFT_CRASH_KILLS", "4"))
PAUSE = 0.15  # seconds the child waits at each marked moment: the kill lands inside it


class MarkMoments(Callback):
    """Prints a line at the moments a kill should be able to hit, and pauses there."""

    def _mark(self, line: str) -> None:
        print(line, flush=True)
        time.sleep(PAUSE)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._mark(f"step {trainer.global_step}")  # before ModelCheckpoint saves this step

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._mark(f"validation at step {trainer.global_step}")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self._mark(f"saving step {trainer.global_step}")


class HalvedWrites(TorchCheckpointIO):
    """Writes a checkpoint file in two halves with a pause between: a kill there leaves it truncated."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getvalue()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as file:
            file.write(data[: len(data) // 2])
            file.flush()
            print(f"writing {Path(path).name}", flush=True)
            time.sleep(PAUSE)
            file.write(data[len(data) // 2 :])


def write_dropout_config(folder: Path, model_dir: Path) -> str:
    config = {
        "seed_everything": 7,
        "trainer": {
            "accelerator": "cpu", "precision": "32-true", "max_steps": 8, "val_check_interval": 2,
            "log_every_n_steps": 1, "enable_progress_bar": False, "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": str(folder / "runs"), "name": "killed"}},
        },
        "model": {
            "model_name_or_path": str(model_dir),
            "peft_config": {"class_path": "peft.LoraConfig",
                            "init_args": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.1}},
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-2}},
        },
        "data": {"train_path": write_jsonl(folder / "train.jsonl", TYPED_RECORDS),
                 "val_path": write_jsonl(folder / "val.jsonl", TYPED_RECORDS[:1]),
                 "format": "typed", "batch_size": 1},
        "checkpoint": {"every_n_train_steps": 1},
        "merge": {"enabled": False},
    }
    path = folder / "dropout.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture
def dropout_config(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return write_dropout_config(tmp_path, tiny_model_dir)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def run_until_killed(config: str, resume: bool, kill_after_lines: int, log: Path) -> int | None:
    """Runs ``python -m lightning_app fit`` in a process of its own and SIGKILLs it after
    ``kill_after_lines`` lines of output; the return code if it finished first, else None."""
    command = ["-m", "lightning_app", "fit", "--config", config] + (["--ckpt_path", "last"] if resume else [])
    process = PreimportedProcess(command, cwd=os.getcwd(), stdout_pipe=True, stderr_path=log)
    try:
        for seen, line in enumerate(process.stdout, start=1):
            if seen == kill_after_lines:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=30)
                return None
        return process.wait(timeout=60)
    finally:
        process.kill()
        process.stdout.close()


def test_a_fit_killed_at_random_moments_ends_with_the_uninterrupted_weights(dropout_config, tmp_path):
    start_preimporting()  # the killed fits' imports, while the uninterrupted fit runs here
    main(["fit", "--config", dropout_config, "--trainer.logger.init_args.name", "straight"])
    straight = load(tmp_path / "runs" / "straight" / "fit" / "checkpoints" / "last.ckpt")
    assert "random_state" in straight["callbacks"]["ExactResume"]

    # Marked moments in a whole fit: per step a step line, a save and a write line for last.ckpt and for
    # the top-k file; a validation and its saves every 2 steps. Kill within the first 12 of a run.
    choices = random.Random(0)
    killed_config = yaml.safe_load(Path(dropout_config).read_text())
    killed_config["trainer"]["callbacks"] = [{"class_path": "tests.test_crash_exact.MarkMoments"}]
    killed_config["trainer"]["plugins"] = [{"class_path": "tests.test_crash_exact.HalvedWrites"}]
    killed = tmp_path / "killed.yaml"
    killed.write_text(yaml.safe_dump(killed_config))
    checkpoints = tmp_path / "runs" / "killed" / "fit" / "checkpoints"
    started, kills, killed_at = time.monotonic(), 0, []
    while True:
        resume = (checkpoints / "last.ckpt").is_file()
        kill_after = choices.randint(1, 12) if kills < KILLS else 0
        return_code = run_until_killed(str(killed), resume, kill_after, tmp_path / "stderr.txt")
        if return_code is not None:
            break
        kills += 1
        if (checkpoints / "last.ckpt").is_file():  # never truncated, whatever the moment
            killed_at.append(load(checkpoints / "last.ckpt")["global_step"])
    seconds = time.monotonic() - started
    print(f"{kills} kills survived in {seconds:.1f} s; last.ckpt at each kill: {killed_at}")
    assert return_code == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    assert kills == KILLS

    resumed = load(checkpoints / "last.ckpt")
    assert resumed["global_step"] == straight["global_step"] == 8
    assert resumed["state_dict"].keys() == straight["state_dict"].keys()
    for name, weight in straight["state_dict"].items():  # the same kernels in the same order: near-exact
        torch.testing.assert_close(resumed["state_dict"][name], weight, rtol=1e-6, atol=0, msg=name)
    straight_adam, resumed_adam = straight["optimizer_states"][0]["state"], resumed["optimizer_states"][0]["state"]
    assert resumed_adam.keys() == straight_adam.keys()
    for index, state in straight_adam.items():  # the same kernels in the same order: near-exact
        for key, value in state.items():
            torch.testing.assert_close(resumed_adam[index][key], value, rtol=1e-6, atol=0, msg=f"{index}.{key}")


CONSTANT = ["--model.lr_schedule", "constant"]  # the 3-step and the 8-step fit share their rates


@pytest.fixture(scope="module")
def stopped_at_step_3(tiny_model_dir, tmp_path_factory) -> tuple[str, dict, Path]:
    """An uninterrupted 8-step fit's last checkpoint, and the last checkpoint of a fit stopped at
    step 3 by max_steps (both with the constant rate), for the resume tests to start from."""
    folder = tmp_path_factory.mktemp("stopped-at-3")
    config = write_dropout_config(folder, tiny_model_dir)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SFT_TOKEN_CACHE", str(folder / "token-cache"))  # as tests/conftest.py gives each test
        main(["fit", "--config", config, *CONSTANT, "--trainer.logger.init_args.name", "straight"])
        main(["fit", "--config", config, *CONSTANT, "--trainer.max_steps", "3"])
    straight = load(folder / "runs" / "straight" / "fit" / "checkpoints" / "last.ckpt")
    return config, straight, folder / "runs" / "killed" / "fit" / "checkpoints" / "last.ckpt"


@pytest.mark.numerics
@pytest.mark.parametrize("keep_random_state", [True, False])
def test_a_resume_continues_the_dropout_masks_only_with_the_random_state(stopped_at_step_3, tmp_path, keep_random_state):
    """In-process: stopped at step 3 by max_steps, resumed to 8. Without the saved random state the
    resumed fit draws other dropout masks and ends elsewhere: the checks above have teeth."""
    config, straight, checkpoint = stopped_at_step_3
    if not keep_random_state:
        state = load(checkpoint)
        del state["callbacks"]["ExactResume"]
        checkpoint = tmp_path / "without_random_state.ckpt"
        torch.save(state, checkpoint)
    main(["fit", "--config", config, *CONSTANT, "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
          "--ckpt_path", str(checkpoint)])
    resumed = load(tmp_path / "runs" / "killed" / "fit" / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 8
    # the same kernels in the same order as the uninterrupted fit: near-exact, where other masks move weights by ~1e-2
    same = [torch.allclose(resumed["state_dict"][name], weight, rtol=1e-6, atol=0)
            for name, weight in straight["state_dict"].items()]
    assert all(same) if keep_random_state else not all(same)
