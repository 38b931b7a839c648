"""Data parallelism on 2 CPU processes (gloo): the same training as one process, token for token.

A run on 2 ranks with micro-batch b takes, at each optimizer step, rank 0 the epoch's batch 2k and
rank 1 batch 2k+1 (``EpochBatchSampler``); one process accumulating 2 micro-batches of b takes the
very same two batches. With every token weighing the same whatever rank trains it (the step's
trained tokens summed over ranks, DDP's gradient averaging undone: core/step_loss.py), both runs
log the same step losses and end with the same weights. The ranks' answers differ in length, so a
rank dividing by its own token count would fail this.

Both sides run in float64 (tests/tolerances.py, rule 1): another summation order (over ranks
rather than micro-batches) moves them ~1e-15 apart, a wrong token weighting by 1e-3 or more. A
resumed float64 fit starts from its checkpoint's weights rounded to float32 once (Lightning loads
them into the module before converting it to float64), so resumed runs agree to float32's epsilon.

``sft fit --trainer.strategy ddp`` relaunches its own command line once per extra rank, so the DDP
run is a process of its own (forked with its imports made: tests/factories.py); the one-process runs
are in-process. One DDP fit (validated after its last step) and its one-process twin serve both tests.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_app.main import main
from tests.factories import run_python, start_preimporting, write_jsonl
from tests.tolerances import FLOAT64_FIT, assert_close_normwise

pytestmark = pytest.mark.processes  # several ranks or a killed process: run alone (Makefile)

# Answers of 1 to 4 sentences: the two ranks' batches hold different numbers of trained tokens.
RECORDS = [
    {"id": f"q{i}", "question": f"What is {i} plus {i}?", "answer": ("It is " + str(2 * i) + ". ") * (1 + i % 4)}
    for i in range(16)
]
MICRO_BATCH = 2  # 16 records: 8 batches an epoch, 4 per rank
FLOAT32_EPS = torch.finfo(torch.float32).eps
# TensorBoard keeps scalars in float32: two float64 losses ~1e-15 apart are logged equal or one float32 apart.
LOGGED_FLOAT32 = {"rel": FLOAT32_EPS, "abs": 0}
# A resume rounds the weights to float32 (each <= eps/2 off), which the steps after carry on (Adam's
# steps are ~1e-2 of the weights, their own rounding float64's); logged, one float32 step more.
RESUMED_WEIGHTS = FLOAT32_EPS
RESUMED_LOSSES = {"rel": 2 * FLOAT32_EPS, "abs": 0}


def write_ddp_config(folder: Path, model_dir: Path, precision: str = "64-true") -> str:
    config = {
        "seed_everything": 7,
        "trainer": {
            "accelerator": "cpu", "precision": precision, "max_steps": 2, "log_every_n_steps": 1,
            "enable_progress_bar": False, "enable_model_summary": False,
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": str(folder / "runs"), "name": "ddp"}},
        },
        "model": {
            "model_name_or_path": str(model_dir),
            "peft_config": {"class_path": "peft.LoraConfig", "init_args": {"r": 4, "lora_alpha": 8}},
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-2}},
            "lr_schedule": "constant",  # the first steps of a 2-step and a 4-step run are the same
        },
        "data": {"train_path": write_jsonl(folder / "train.jsonl", RECORDS), "format": "qa",
                 "batch_size": MICRO_BATCH},
    }
    path = folder / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def edit_config(config: str, section: str, **settings) -> None:
    path = Path(config)
    values = yaml.safe_load(path.read_text())
    values[section].update(settings)
    path.write_text(yaml.safe_dump(values))


def fit_on_two_processes(config: str, *args: str) -> subprocess.CompletedProcess:
    return run_python(["-m", "lightning_app", "fit", "--config", config, "--trainer.strategy", "ddp",
                       "--trainer.devices", "2", *args],
                      cwd=Path(config).parent, env={**os.environ, "OMP_NUM_THREADS": "1"})  # two ranks on a small CPU


def fit_in_process(config: str, runs: Path, name: str, *args: str) -> Path:
    """One process accumulating 2 micro-batches a step; the run's folder."""
    main(["fit", "--config", config, "--trainer.accumulate_grad_batches", "2",
          "--trainer.logger.init_args.save_dir", str(runs), "--trainer.logger.init_args.name", name, *args])
    return runs / name / "fit"


def step_losses(run_dir: Path) -> list[float]:
    return [point.value for point in EventAccumulator(str(run_dir)).Reload().Scalars("train/loss")]


def val_loss(run_dir: Path) -> float:
    return EventAccumulator(str(run_dir)).Reload().Scalars("val/loss")[-1].value


def adapter_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["state_dict"] and all("lora_" in key for key in checkpoint["state_dict"])  # adapters only
    return checkpoint["state_dict"]


def assert_same_float64_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for key in first:  # float64 fits in another summation order (tests/tolerances.py, rule 1)
        assert first[key].dtype == torch.float64, key
        torch.testing.assert_close(first[key], second[key], **FLOAT64_FIT, msg=key)


def assert_same_resumed_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for key in first:
        assert first[key].dtype == torch.float64, key
        assert_close_normwise(first[key], second[key], RESUMED_WEIGHTS, msg=key)


def resume_in_one_process(config: str, checkpoint: Path, runs: Path) -> tuple[Path, Path]:
    """A 2-step checkpoint resumed in one process to step 4, and a one-process run of 4 steps: their folders."""
    resumed_dir = fit_in_process(config, runs, "resumed", "--trainer.max_steps", "4", "--ckpt_path", str(checkpoint))
    return resumed_dir, fit_in_process(config, runs, "whole", "--trainer.max_steps", "4")


@pytest.fixture(scope="module")
def ddp_and_one_process(tiny_model_dir, tmp_path_factory) -> tuple[str, subprocess.CompletedProcess, Path, Path]:
    """Two ranks with micro-batch 2, two steps, validated after step 2 on 11 records in batches of 4
    (3 batches: rank 1 repeats batch 0 to even the rounds); one process accumulating 2 micro-batches
    of 2, the same. The config, the DDP run's process and both run folders."""
    folder = tmp_path_factory.mktemp("ddp")
    config = write_ddp_config(folder, tiny_model_dir)
    edit_config(config, "data", val_path=write_jsonl(folder / "val.jsonl", RECORDS[:11]), eval_batch_size=4)
    edit_config(config, "trainer", val_check_interval=2)  # 2 batches: step 2 on each rank, steps 1 and 2 in one process
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SFT_TOKEN_CACHE", str(folder / "token-cache"))  # as tests/conftest.py gives each test
        start_preimporting()  # the DDP run's imports, while the one-process run trains
        one_dir = fit_in_process(config, folder / "runs", "one")
        ddp = fit_on_two_processes(config)
    return config, ddp, folder / "runs" / "ddp" / "fit", one_dir


def test_ddp_on_two_processes_trains_as_one_process_and_checkpoints_cross_over(ddp_and_one_process, tmp_path):
    config, ddp, ddp_dir, one_dir = ddp_and_one_process
    # 1. Two ranks with micro-batch 2, two steps: both exit 0, with a checkpoint and a summary.
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    assert (ddp_dir / "summary.json").is_file() and (ddp_dir / "merged").is_dir()
    assert not (ddp_dir.parent / "fit_1").exists()  # rank 1 wrote no run folder of its own

    # 2. One process accumulating 2 micro-batches of 2: the same step losses and the same adapters.
    ddp_losses, one_losses = step_losses(ddp_dir), step_losses(one_dir)
    assert len(ddp_losses) == len(one_losses) == 2
    assert ddp_losses == pytest.approx(one_losses, **LOGGED_FLOAT32)
    assert_same_float64_weights(adapter_weights(ddp_dir), adapter_weights(one_dir))
    ddp_checkpoint = torch.load(ddp_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    one_checkpoint = torch.load(one_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ddp_checkpoint["tokens_seen"] == one_checkpoint["tokens_seen"]  # counted over every rank

    # 3. The DDP checkpoint resumed in one process trains on as a one-process run of 4 steps does.
    resumed_dir, whole_dir = resume_in_one_process(config, ddp_dir / "checkpoints" / "last.ckpt", tmp_path / "runs")
    assert step_losses(resumed_dir) == pytest.approx(step_losses(whole_dir)[2:], **RESUMED_LOSSES)
    assert_same_resumed_weights(adapter_weights(resumed_dir), adapter_weights(whole_dir))

    # 4. And the one-process checkpoint resumed on two ranks, too.
    on_two = fit_on_two_processes(config, "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
                                  "--trainer.logger.init_args.name", "on_two", "--trainer.max_steps", "4",
                                  "--ckpt_path", str(one_dir / "checkpoints" / "last.ckpt"))
    assert on_two.returncode == 0, on_two.stderr[-4000:]
    on_two_dir = tmp_path / "runs" / "on_two" / "fit"
    assert step_losses(on_two_dir) == pytest.approx(step_losses(whole_dir)[2:], **RESUMED_LOSSES)
    assert_same_resumed_weights(adapter_weights(on_two_dir), adapter_weights(whole_dir))


def test_ddp_validation_loss_is_the_one_process_loss_over_every_rank(ddp_and_one_process):
    """11 validation records in batches of 4: 3 batches, rank 1 repeats batch 0 to even the rounds.
    val/loss is summed over both ranks' batches (token-weighted), the repeat left out: one process's value."""
    _, ddp, ddp_dir, one_dir = ddp_and_one_process
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    assert val_loss(ddp_dir) == pytest.approx(val_loss(one_dir), **LOGGED_FLOAT32)


def test_a_4bit_lora_on_two_processes_trains_as_one_process_and_merges(tiny_model_dir, tmp_path):
    """bitsandbytes' CPU kernels under DDP: each rank quantizes the same base, the adapters' gradients are
    all-reduced as for a float base, and rank 0 merges into the de-quantized float32 base."""
    start_preimporting()
    config = write_ddp_config(tmp_path, tiny_model_dir, precision="32-true")
    edit_config(config, "model", quantization="4bit")
    result = fit_on_two_processes(config)
    assert result.returncode == 0, result.stderr[-3000:]
    two = tmp_path / "runs" / "ddp" / "fit"
    one = fit_in_process(config, tmp_path / "one", "one", "--merge.enabled", "false")
    expected, got = adapter_weights(one), adapter_weights(two)
    for name in expected:  # float32: the ranks' mean and the accumulated sum add the same terms in another order
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6,
                                   msg=lambda text, name=name: f"{name}: {text}")
    report = json.loads((two / "merged" / "merge_report.json").read_text())
    assert report["quantized"] and report["passed"] and report["quantized_model_relative_error"] < 1e-5
