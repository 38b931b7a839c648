"""``sft compare``: a table with a row per run that parses back, and a loss-curve PNG with both runs on it."""

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.image import imread
from peft import LoraConfig

from evaluation.curves import read_loss_curves
from lightning_app.compare import compare_command, compare_runs
from tests.test_callbacks_metrics import TRAIN_BATCHES, fit_with_metrics, table_cells

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def two_runs(tiny_model_dir, tmp_path_factory) -> list[str]:
    lora_trainer, _, _ = fit_with_metrics(tiny_model_dir, tmp_path_factory.mktemp("lora"), "lora",
                                          peft_config=LoraConfig(r=4, lora_alpha=8))
    full_trainer, _, _ = fit_with_metrics(tiny_model_dir, tmp_path_factory.mktemp("full"), "full")
    return [lora_trainer.log_dir, full_trainer.log_dir]


def test_comparison_table_has_one_parsable_row_per_run(two_runs, tmp_path):
    markdown_path = compare_runs(two_runs, str(tmp_path / "out"))
    assert markdown_path == tmp_path / "out" / "comparison.md"
    table = [line for line in markdown_path.read_text().splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(two_runs)  # header, rule, a row per run
    header = table_cells(table[0])
    assert header == ["run", "method", "optimizer", "trainable %", "peak memory (MiB)", "time/epoch (s)",
                      "tokens/s", "final train loss", "final val loss"]
    rows = [dict(zip(header, table_cells(line))) for line in table[2:]]
    assert all(len(table_cells(line)) == len(header) for line in table[2:])
    runs_and_methods = [(row["run"], row["method"]) for row in rows]
    assert runs_and_methods == [("lora/version_0", "LoraConfig"), ("full/version_0", "full")]
    for row, run_dir in zip(rows, two_runs):
        summary = json.loads(Path(run_dir, "summary.json").read_text())
        assert float(row["final val loss"]) == pytest.approx(summary["final_val_loss"], abs=1e-4)
        assert float(row["final train loss"]) == pytest.approx(summary["final_train_loss"], abs=1e-4)
        assert float(row["trainable %"]) == pytest.approx(summary["trainable_percent"], abs=1e-3)
        assert float(row["tokens/s"]) > 0 and float(row["time/epoch (s)"]) > 0
    assert float(rows[0]["trainable %"]) < float(rows[1]["trainable %"]) == 100.0


def test_loss_curves_are_read_from_the_event_files(two_runs):
    curves = read_loss_curves(Path(two_runs[0]))
    train_steps, train_losses = curves["train/loss"]
    assert train_steps == list(range(TRAIN_BATCHES)) and all(0 < loss < 20 for loss in train_losses)
    val_steps, val_losses = curves["val/loss"]
    assert len(val_steps) == len(val_losses) == 1
    summary = json.loads(Path(two_runs[0], "summary.json").read_text())
    assert val_losses[0] == pytest.approx(summary["final_val_loss"], rel=1e-6)


def test_loss_curve_png_is_valid_and_shows_both_runs(two_runs, tmp_path):
    compare_runs(two_runs, str(tmp_path))
    png = (tmp_path / "loss_curves.png").read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 10_000
    pixels = imread(tmp_path / "loss_curves.png")[..., :3]  # (height, width, rgb) in [0, 1]
    for colour in ("C0", "C1"):  # one colour per run: each run's lines were drawn
        near = np.abs(pixels - np.array(to_rgb(colour))).max(axis=-1) < 0.05
        assert near.sum() > 100, colour


def test_command_writes_into_out_and_prints_the_table_path(two_runs, tmp_path, capsys):
    compare_command([*two_runs, "--out", str(tmp_path / "cmp")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "cmp" / "comparison.md")
    assert (tmp_path / "cmp" / "loss_curves.png").is_file()


def test_a_folder_without_summary_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="version folder"):
        compare_runs([str(tmp_path)], str(tmp_path / "out"))
