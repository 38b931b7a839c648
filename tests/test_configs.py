"""Every YAML in configs/ parses against the code, and smoke-runs a step on a tiny model."""

from pathlib import Path

import pytest
import yaml

from lightning_app.cli import SFTCLI
from lightning_app.main import main

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((PROJECT_ROOT / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert any(path.name == "demo.yaml" for path in CONFIGS)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.name)
def test_config_parses_and_first_line_names_its_command(config, monkeypatch):
    monkeypatch.chdir(PROJECT_ROOT)
    cli = SFTCLI(args=["--config", str(config)], run=False)  # builds every object; loads no weights
    assert cli.model.model_name_or_path and cli.datamodule.spec.record_format
    assert cli.datamodule.tokenizer_name_or_path == cli.model.model_name_or_path  # the link holds
    first_lines = config.read_text().splitlines()[:4]
    assert any("sft " in line and line.startswith("#") for line in first_lines)
    assert yaml.safe_load(config.read_text())  # plain YAML too


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.name)
def test_config_smoke_runs_on_a_tiny_model(config, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(PROJECT_ROOT)
    main([
        "fit", "--config", str(config),
        "--model.model_name_or_path", str(tiny_model_dir),
        "--trainer.accelerator", "cpu", "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--data.max_length", "256", "--data.batch_size", "2",
    ])
    assert list((tmp_path / "runs").glob("*/version_0/checkpoints/last.ckpt"))
