"""Sharded training: FSDP on 2 CPU processes (gloo), for real; FSDP and DeepSpeed ZeRO-3 on GPUs, marked.

The CPU run takes the shipped overlay configs/strategies/fsdp.yaml with its class swapped for
``modules.training.sharding.CPUFSDPStrategy`` (Lightning's FSDPStrategy refuses a CPU accelerator; the subclass
only passes torch's FSDP ``device_id=cpu``). Like the DDP test (tests/test_ddp.py): 2 ranks with
micro-batch b log the same step losses, reach the same adapters and the same val/loss as one process
accumulating 2 micro-batches of b; its checkpoint holds the adapter weights whole (rank 0 gathers
them: state_dict_type full) and resumes in one process, a one-process checkpoint on two; the merged export, rebuilt on rank 0 from
the gathered weights, gives the one-process export's logits.

Lightning's FSDP takes no float64, so both sides train in float32 and are compared with the bounds of
tests/tolerances.py (rules 2 and 3): each step adds a forward/backward's reordering to the weights.
"""

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from transformers import AutoModelForCausalLM

from modules.training.sharding import (
    CPUFSDPStrategy,
    refuse_merge_from_checkpoint_folders,
    refuse_quantized_sharding,
    shards_parameters,
)
from tests.factories import run_python, start_preimporting
from tests.test_ddp import (adapter_weights, edit_config, fit_in_process, resume_in_one_process, step_losses,
                            val_loss, write_ddp_config)
from tests.tolerances import assert_close_normwise, assert_same_updates, reordering_bound

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = sorted((PROJECT_ROOT / "configs" / "strategies").glob("*.yaml"))
FSDP_OVERLAY = PROJECT_ROOT / "configs" / "strategies" / "fsdp.yaml"
# One forward/backward of the tiny model in another order (tests/tolerances.py): a value computed
# after k optimizer steps carries k of these in its weights, plus its own forward.
ONE_PASS = reordering_bound(torch.float32)


def run_sft(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks on a small CPU
    return subprocess.run([sys.executable, "-m", "lightning_app", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def fit_on_two_cpu_processes(*args: str) -> subprocess.CompletedProcess:
    """``sft fit`` as run_sft runs it, forked with its imports made (tests/factories.py)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks on a small CPU
    return run_python(["-m", "lightning_app", "fit", *args], cwd=os.getcwd(), env=env)


class InitialAdapters(Callback):
    """Saves the trainable weights as training starts: what the compared updates start from."""

    def __init__(self, path: str):
        self.path = path

    def on_train_start(self, trainer, pl_module):
        torch.save({name: weight.detach().clone() for name, weight in pl_module.named_parameters()
                    if weight.requires_grad}, self.path)


def merged_logits(folder: Path) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([[256, 117, 115, 101, 114, 10, 104, 105, 257, 10]])).logits


# The overlays parse against the strategies' own arguments --------------------------------------------
def test_there_are_strategy_overlays():
    assert [path.stem for path in STRATEGIES] == ["deepspeed_zero2", "deepspeed_zero3", "fsdp"]


@pytest.mark.parametrize("overlay", STRATEGIES, ids=lambda path: path.name)
def test_strategy_overlay_names_its_command_and_only_real_arguments(overlay):
    text = overlay.read_text()
    assert text.startswith("# ") and f"--config configs/strategies/{overlay.name}" in text.splitlines()[1]
    strategy = yaml.safe_load(text)["trainer"]["strategy"]
    strategy_class = {"lightning.pytorch.strategies.FSDPStrategy": FSDPStrategy,
                      "lightning.pytorch.strategies.DeepSpeedStrategy": DeepSpeedStrategy}[strategy["class_path"]]
    assert set(strategy["init_args"]) <= set(inspect.signature(strategy_class.__init__).parameters)


# Combinations that cannot work stop with a reason -----------------------------------------------------
def test_a_quantized_base_is_refused_under_sharding_and_a_merge_of_a_sharded_checkpoint_too():
    fsdp = CPUFSDPStrategy(state_dict_type="sharded")
    assert shards_parameters(fsdp)
    with pytest.raises(ValueError, match="cannot be cut into shards"):
        refuse_quantized_sharding(fsdp, "4bit")
    with pytest.raises(ValueError, match="merge.use_best false"):
        refuse_merge_from_checkpoint_folders(fsdp)
    refuse_merge_from_checkpoint_folders(CPUFSDPStrategy(state_dict_type="full"))  # one file: fine
    refuse_quantized_sharding(fsdp, None)


# FSDP + LoRA on 2 CPU processes -----------------------------------------------------------------------
@pytest.fixture
def ddp_config(tiny_model_dir, tmp_path, monkeypatch):
    """tests/test_ddp.py's run in float32, written to ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    return write_ddp_config(tmp_path, tiny_model_dir, precision="32-true")


@pytest.mark.processes
def test_fsdp_on_two_cpu_processes_trains_as_one_process_checkpoints_whole_adapters_and_merges(ddp_config, tmp_path):
    edit_config(ddp_config, "data", val_path=yaml.safe_load(Path(ddp_config).read_text())["data"]["train_path"],
                eval_batch_size=3)  # 16 records, 6 batches: 3 a rank
    edit_config(ddp_config, "trainer", val_check_interval=2)  # validate after step 2 (within the first epoch)
    fsdp_options = ["--config", str(FSDP_OVERLAY), "--trainer.strategy.class_path", "modules.training.sharding.CPUFSDPStrategy",
                    "--trainer.devices", "2"]
    runs = tmp_path / "runs"

    # 1. Two ranks, FSDP (the shipped overlay), micro-batch 2, two steps.
    start_preimporting()  # the FSDP run's imports, while the one-process run (2.) trains
    initial = tmp_path / "initial_adapters.pt"
    one_dir = fit_in_process(ddp_config, runs, "one", "--trainer.callbacks", json.dumps(
        [{"class_path": "tests.test_sharded.InitialAdapters", "init_args": {"path": str(initial)}}]))
    fsdp = fit_on_two_cpu_processes("--config", ddp_config, *fsdp_options, "--trainer.logger.init_args.name", "fsdp")
    assert fsdp.returncode == 0, fsdp.stderr[-4000:]
    fsdp_dir = runs / "fsdp" / "fit"

    # 2. One process accumulating 2 micro-batches of 2: the same step losses, adapters and val/loss.
    before = torch.load(initial)
    assert len(step_losses(fsdp_dir)) == 2
    # step k's loss: k-1 steps of reordering in the weights, and its own forward
    assert_close_normwise(torch.tensor(step_losses(fsdp_dir)), torch.tensor(step_losses(one_dir)), 2 * ONE_PASS)
    # after 2 steps, one more forward
    assert_close_normwise(torch.tensor(val_loss(fsdp_dir)), torch.tensor(val_loss(one_dir)), 3 * ONE_PASS)
    fsdp_adapters, one_adapters = adapter_weights(fsdp_dir), adapter_weights(one_dir)  # lora_ keys only
    assert {k: v.shape for k, v in fsdp_adapters.items()} == {k: v.shape for k, v in one_adapters.items()}  # whole
    assert_same_updates(fsdp_adapters, one_adapters, before, 2 * ONE_PASS)  # rule 3: 2 steps

    # 3. The FSDP checkpoint (weights and Adam state gathered whole) resumed in one process trains on as a
    # one-process run of 4 steps does.
    resumed_dir, whole_dir = resume_in_one_process(ddp_config, fsdp_dir / "checkpoints" / "last.ckpt", runs)
    assert_close_normwise(torch.tensor(step_losses(resumed_dir)), torch.tensor(step_losses(whole_dir)[2:]),
                          4 * ONE_PASS)  # steps 3 and 4
    assert_same_updates(adapter_weights(resumed_dir), adapter_weights(whole_dir), before, 4 * ONE_PASS)

    # 4. And the one-process checkpoint resumed on two FSDP ranks (each loads it, then keeps its shard).
    on_two = fit_on_two_cpu_processes("--config", ddp_config, *fsdp_options, "--trainer.logger.init_args.name",
                                      "on_two", "--trainer.max_steps", "4",
                                      "--ckpt_path", str(one_dir / "checkpoints" / "last.ckpt"))
    assert on_two.returncode == 0, on_two.stderr[-4000:]
    on_two_dir = runs / "on_two" / "fit"
    assert_close_normwise(torch.tensor(step_losses(on_two_dir)), torch.tensor(step_losses(whole_dir)[2:]),
                          4 * ONE_PASS)
    assert_same_updates(adapter_weights(on_two_dir), adapter_weights(whole_dir), before, 4 * ONE_PASS)

    # 5. The merged export, rebuilt on rank 0 from the gathered weights: checked, and the one-process export's logits.
    report = json.loads((fsdp_dir / "merged" / "merge_report.json").read_text())
    # the merged model's logits against the adapter model's: one forward in another order (max-norm, relative)
    assert report["merged"] and report["passed"] and report["relative_error"] <= ONE_PASS
    # weights 2 steps of reordering apart, then a forward each
    assert_close_normwise(merged_logits(fsdp_dir / "merged"), merged_logits(one_dir / "merged"), 3 * ONE_PASS)


# On GPUs ------------------------------------------------------------------------------------------------
GPUS = torch.cuda.device_count()


def gpu_fit(ddp_config: str, overlay: str, name: str) -> Path:
    result = run_sft("fit", "--config", ddp_config, "--config", str(PROJECT_ROOT / "configs" / "strategies" / overlay),
                     "--trainer.accelerator", "gpu", "--trainer.devices", str(GPUS),
                     "--trainer.logger.init_args.name", name)
    assert result.returncode == 0, result.stderr[-4000:]
    return Path(ddp_config).parent / "runs" / name / "fit"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FSDP across GPUs (NCCL) needs CUDA GPUs; the CPU FSDP test above runs here")
def test_fsdp_lora_on_the_gpus_checkpoints_adapters_and_merges(ddp_config):
    run_dir = gpu_fit(ddp_config, "fsdp.yaml", "fsdp_gpu")
    assert adapter_weights(run_dir)  # lora_ keys only, whole (rank 0 gathered them)
    report = json.loads((run_dir / "merged" / "merge_report.json").read_text())
    assert report["merged"] and report["passed"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="DeepSpeed ZeRO-3 runs on CUDA GPUs only")
def test_deepspeed_zero3_lora_fits_and_merges(ddp_config):
    pytest.importorskip("deepspeed", reason="pip install 'lightning-sft[deepspeed]'")
    run_dir = gpu_fit(ddp_config, "deepspeed_zero3.yaml", "zero3")
    assert (run_dir / "checkpoints" / "last.ckpt").is_dir()  # DeepSpeed's folder of parts
    report = json.loads((run_dir / "merged" / "merge_report.json").read_text())
    assert report["merged"] and report["passed"] and report["weights"] == "end of fit"
