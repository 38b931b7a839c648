"""A fit stopped by its budget (max_steps, max_time) resumes with a larger one and trains on; a
resume with nothing left stops with a one-line error and writes nothing.

One epoch of 4 batches (4 records, batch size 1). A run stopped after 2 steps saved its last
checkpoint at the cut epoch's end, where Lightning counts the epoch as processed: resumed with
``max_steps 4`` it trained nothing until the checkpoint's loop state was corrected.
"""

import math
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import timer as timer_module
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_app.main import main
from tests.factories import TYPED_RECORDS, write_jsonl

LR = 1e-3


@pytest.fixture
def one_epoch_config(tiny_model_dir, tmp_path, monkeypatch):
    """One epoch of 4 one-record batches, LoRA without dropout, no validation; fp32 on every machine
    (an unset precision follows the machine)."""
    monkeypatch.chdir(tmp_path)
    config = {
        "seed_everything": 7,
        "trainer": {
            "accelerator": "cpu", "precision": "32-true", "max_epochs": 1, "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": "runs", "name": "tiny"}},
        },
        "model": {
            "model_name_or_path": str(tiny_model_dir),
            "peft_config": {"class_path": "peft.LoraConfig", "init_args": {"r": 4, "lora_alpha": 8}},
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": LR}},
        },
        "data": {"train_path": write_jsonl(tmp_path / "train.jsonl", TYPED_RECORDS), "format": "typed",
                 "batch_size": 1},
    }
    path = tmp_path / "one_epoch.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def last_checkpoint(tmp_path, name="tiny", run="fit") -> dict:
    return load_checkpoint(tmp_path / "runs" / name / run / "checkpoints" / "last.ckpt")


def assert_same_training(resumed: dict, straight: dict, steps: int = 4) -> None:
    assert resumed["global_step"] == straight["global_step"] == steps
    adam_steps = {int(state["step"]) for state in resumed["optimizer_states"][0]["state"].values()}
    assert adam_steps == {steps}  # the optimizer went on from the restored step count
    assert resumed["state_dict"].keys() == straight["state_dict"].keys()
    for name, weight in straight["state_dict"].items():  # the same kernels on the same batches in the same order
        torch.testing.assert_close(resumed["state_dict"][name], weight, rtol=1e-6, atol=1e-7, msg=name)


def folder_state(folder: Path) -> dict:
    """Every file under ``folder`` with its modification time and bytes."""
    return {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in folder.rglob("*") if path.is_file()}


# A constant learning rate: a cosine schedule over 2 steps and one over 4 give steps 1-2 other rates.
CONSTANT_LR = ["--model.lr_schedule", "constant"]


def test_a_fit_stopped_by_max_steps_resumes_from_last_with_a_larger_one(one_epoch_config, tmp_path):
    main(["fit", "--config", one_epoch_config, *CONSTANT_LR, "--trainer.max_steps", "4",
          "--trainer.logger.init_args.name", "straight"])
    main(["fit", "--config", one_epoch_config, *CONSTANT_LR, "--trainer.max_steps", "2"])
    stopped = last_checkpoint(tmp_path)
    assert stopped["global_step"] == 2
    assert stopped["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 0  # epoch 0 not done

    main(["fit", "--config", one_epoch_config, *CONSTANT_LR, "--trainer.max_steps", "4", "--ckpt_path", "last"])
    assert_same_training(last_checkpoint(tmp_path), last_checkpoint(tmp_path, "straight"))
    assert not (tmp_path / "runs" / "tiny" / "fit_1").exists()


def test_a_fit_stopped_by_max_steps_resumes_from_an_explicit_checkpoint(one_epoch_config, tmp_path):
    main(["fit", "--config", one_epoch_config, *CONSTANT_LR, "--trainer.max_steps", "4",
          "--trainer.logger.init_args.name", "straight"])
    main(["fit", "--config", one_epoch_config, *CONSTANT_LR, "--trainer.max_steps", "2"])
    checkpoint = tmp_path / "runs" / "tiny" / "fit" / "checkpoints" / "last.ckpt"
    main(["fit", "--config", one_epoch_config, *CONSTANT_LR, "--trainer.max_steps", "4",
          "--ckpt_path", str(checkpoint)])
    resumed = last_checkpoint(tmp_path, run="fit_1")  # an explicit path starts a new run folder
    assert_same_training(resumed, last_checkpoint(tmp_path, "straight"))
    assert load_checkpoint(checkpoint)["global_step"] == 2  # the stopped run's checkpoint is kept


def test_the_first_resumed_step_takes_the_larger_budgets_learning_rate(one_epoch_config, tmp_path):
    """A cosine decay over 2 steps ends at 0; resumed with max_steps 4, step 3 must take the 4-step
    schedule's rate, not the 0 the stopped run's schedule left in the optimizer."""
    main(["fit", "--config", one_epoch_config, "--trainer.max_steps", "2"])
    main(["fit", "--config", one_epoch_config, "--trainer.max_steps", "4", "--ckpt_path", "last"])
    events = EventAccumulator(str(tmp_path / "runs" / "tiny" / "fit")).Reload()
    rates = {point.step: point.value for point in events.Scalars("train/learning_rate")}
    cosine = [LR * 0.5 * (1 + math.cos(math.pi * step / 4)) for step in range(4)]
    assert rates[2] == pytest.approx(cosine[2]) and rates[3] == pytest.approx(cosine[3])


class StepClock:
    """Stands in for ``time`` in Lightning's Timer: 10 s pass at every reading, so a run stops after
    a known number of batches (the Timer reads the clock at train start and after each batch)."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 10.0
        return self.now


# (micro-batches a step, max_time, global step at the stop): 2 batches of 1 step each; or 3 batches,
# the third alone in its window: its gradient is dropped and the resumed run must train it again.
@pytest.mark.parametrize(("accumulate", "max_time", "stopped_step"), [(1, "00:00:00:15", 2), (2, "00:00:00:25", 1)])
def test_a_fit_stopped_by_max_time_resumes_with_a_larger_one(one_epoch_config, tmp_path, monkeypatch, accumulate,
                                                             max_time, stopped_step):
    config = ["fit", "--config", one_epoch_config, "--trainer.accumulate_grad_batches", str(accumulate)]
    monkeypatch.setattr(timer_module, "time", StepClock())
    main([*config, "--trainer.logger.init_args.name", "straight"])
    monkeypatch.setattr(timer_module, "time", StepClock())
    main([*config, "--trainer.max_time", max_time])
    assert last_checkpoint(tmp_path)["global_step"] == stopped_step

    with pytest.raises(SystemExit) as stop:  # the same budget again: used up
        main([*config, "--trainer.max_time", max_time, "--ckpt_path", "last"])
    message = str(stop.value)
    assert f"at global step {stopped_step} with 0 finished epoch(s), and --trainer.max_time is 0:00:" in message
    assert message.endswith("were trained; raise --trainer.max_time to train further")

    monkeypatch.setattr(timer_module, "time", StepClock())
    main([*config, "--trainer.max_time", "00:00:10:00", "--ckpt_path", "last"])
    # No max_steps in either run: both cosine schedules span the epoch's steps.
    assert_same_training(last_checkpoint(tmp_path), last_checkpoint(tmp_path, "straight"), steps=4 // accumulate)


# (the first run's max_steps, the resume's budget, what the error says of them); -1: the whole epoch.
@pytest.mark.parametrize(("first_max_steps", "budget", "used_up"), [
    ("2", ["--trainer.max_steps", "2"], "at global step 2 with 0 finished epoch(s), and --trainer.max_steps is 2; "
                                        "raise --trainer.max_steps to train further"),
    ("-1", ["--trainer.max_epochs", "1"], "at global step 4 with 1 finished epoch(s), and --trainer.max_epochs is 1; "
                                          "raise --trainer.max_epochs to train further"),
])
def test_a_resume_with_nothing_left_stops_with_an_error_and_writes_nothing(one_epoch_config, tmp_path,
                                                                             first_max_steps, budget, used_up):
    main(["fit", "--config", one_epoch_config, "--trainer.max_steps", first_max_steps])
    runs = tmp_path / "runs" / "tiny"
    before = folder_state(runs)
    assert (runs / "fit" / "merged").is_dir() and (runs / "fit" / "summary.json").is_file()

    for ckpt_path in ("last", str(runs / "fit" / "checkpoints" / "last.ckpt")):
        with pytest.raises(SystemExit) as stop:
            main(["fit", "--config", one_epoch_config, *budget, "--ckpt_path", ckpt_path])
        message = stop.value.code  # a message as the exit code: Python prints it and exits with status 1
        assert isinstance(message, str) and "\n" not in message
        assert message.startswith("sft fit: nothing left to train: checkpoint ")
        assert message.endswith(f"runs/tiny/fit/checkpoints/last.ckpt is {used_up}")
        assert folder_state(runs) == before  # no new version folder, nothing rewritten
