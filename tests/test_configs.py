"""Every YAML in configs/ parses against the code, and smoke-runs a step on a tiny model.

The scenario configs of configs/scenarios/ (one per user of shared/SCENARIOS.md) are parsed here too;
tests/test_scenarios.py runs each of them end to end (fit, test, predict) as its header says.

A config with a ``# gpu-only: <why>`` line (4-bit/8-bit bases, bitsandbytes optimizers) smoke-runs
on a GPU only (those runs are marked ``gpu``); without one it is skipped with that reason, and must
instead stop before its first step with an error that names the GPU requirement and the setting to
change. The GPU-table configs in benchmarks/gpu/ are parsed and checked the same way; their runs
are tests/test_gpu_compare.py's.
"""

from pathlib import Path

import pytest
import torch
import yaml

from lightning_app.cli import SFTCLI
from lightning_app.main import main
from tests.factories import BF16_CONFIG_ON_THIS_CPU

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((PROJECT_ROOT / "configs").glob("*.yaml"))
SCENARIO_CONFIGS = sorted((PROJECT_ROOT / "configs" / "scenarios").glob("*.yaml"))  # run by test_scenarios.py
BENCHMARK_CONFIGS = sorted((PROJECT_ROOT / "benchmarks" / "gpu").glob("*.yaml"))
GPU_ONLY_MARKER = "# gpu-only:"


def gpu_only_reason(config: Path) -> str | None:
    """The text after a ``# gpu-only:`` line of the config; None for configs that run anywhere."""
    for line in config.read_text().splitlines():
        if line.startswith(GPU_ONLY_MARKER):
            return line[len(GPU_ONLY_MARKER):].strip()
    return None


GPU_ONLY_CONFIGS = [config for config in CONFIGS + BENCHMARK_CONFIGS if gpu_only_reason(config)]


def smoke_args(config: Path, model_dir, runs_dir: Path, accelerator: str) -> list[str]:
    return [
        "fit", "--config", str(config),
        "--model.model_name_or_path", str(model_dir),
        "--trainer.accelerator", accelerator, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(runs_dir),
        "--data.max_length", "256", "--data.batch_size", "2",
    ]


def test_there_are_configs():
    assert any(path.name == "demo.yaml" for path in CONFIGS)
    assert [path.stem for path in SCENARIO_CONFIGS] == [
        "alpaca_history_lora", "math500_lora", "qa_squad_lora", "think_full", "typed_multi"]
    assert [path.stem for path in BENCHMARK_CONFIGS] == [
        "qwen3_0.6b_full_adamw", "qwen3_0.6b_full_sgd", "qwen3_0.6b_lora", "qwen3_0.6b_qlora"]


@BF16_CONFIG_ON_THIS_CPU
@pytest.mark.parametrize("config", CONFIGS + SCENARIO_CONFIGS + BENCHMARK_CONFIGS,
                         ids=lambda path: f"scenarios/{path.name}" if path in SCENARIO_CONFIGS else path.name)
def test_config_parses_and_first_line_names_its_command(config, monkeypatch):
    monkeypatch.chdir(PROJECT_ROOT)
    cli = SFTCLI(args=["--config", str(config)], run=False)  # builds every object; loads no weights
    assert cli.model.model_name_or_path and cli.datamodule.spec.record_format
    assert cli.datamodule.tokenizer_name_or_path == cli.model.model_name_or_path  # the link holds
    first_lines = config.read_text().splitlines()[:4]
    assert any("sft " in line and line.startswith("#") for line in first_lines)
    assert yaml.safe_load(config.read_text())  # plain YAML too


# Where no CUDA GPU pages its states, the paged optimizer's config says so in one line (a warning of ours).
UNPAGED_HERE = pytest.mark.filterwarnings("ignore:model.optimizer. PagedAdamW pages its states")


@pytest.mark.parametrize("config", [
    pytest.param(config, marks=([pytest.mark.gpu] if gpu_only_reason(config) else [])
                 + ([UNPAGED_HERE] if "paged" in config.name else [])) for config in CONFIGS
], ids=lambda path: path.name)
def test_config_smoke_runs_on_a_tiny_model(config, tiny_model_dir, tmp_path, monkeypatch):
    reason = gpu_only_reason(config)
    if reason and not torch.cuda.is_available():
        pytest.skip(f"{config.name} is marked '{GPU_ONLY_MARKER} {reason}' and this machine has no CUDA GPU")
    monkeypatch.chdir(PROJECT_ROOT)
    main(smoke_args(config, tiny_model_dir, tmp_path / "runs", "gpu" if reason else "cpu"))
    assert list((tmp_path / "runs").glob("*/fit/checkpoints/last.ckpt"))


def test_the_gpu_only_config_is_the_gpu_tables_qlora_row():
    assert {config.stem for config in GPU_ONLY_CONFIGS} == {"qwen3_0.6b_qlora"}  # bitsandbytes runs on CPUs too


@BF16_CONFIG_ON_THIS_CPU
@pytest.mark.parametrize("setting", ["4bit", "8bit"])
def test_a_quantized_config_stops_before_any_step_where_bitsandbytes_kernels_do_not_run(setting, tiny_model_dir,
                                                                                        tmp_path, monkeypatch):
    from modules.backbone import quantization

    monkeypatch.chdir(PROJECT_ROOT)
    monkeypatch.setattr(quantization.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(quantization, "cpu_kernel_failure", lambda mode: "RuntimeError: no CPU backend")
    config = PROJECT_ROOT / "configs" / ("smollm2_qlora.yaml" if setting == "4bit" else "smollm2_lora_8bit.yaml")
    with pytest.raises(quantization.QuantizedKernelsMissingError) as raised:
        main(smoke_args(config, tiny_model_dir, tmp_path / "runs", "cpu"))
    assert str(raised.value) == (f"model.quantization: {setting}: bitsandbytes' CPU kernels do not run on this machine "
                                 "(RuntimeError: no CPU backend); drop model.quantization or run on a CUDA GPU")
    assert not list((tmp_path / "runs").glob("*/*/checkpoints/*.ckpt"))  # stopped before any step
