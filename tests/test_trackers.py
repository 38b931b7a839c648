"""Experiment trackers: each configs/trackers/ snippet swaps TensorBoard for its logger on a tiny 2-step fit
and that tracker's files hold the run's metrics; TensorBoard's HParams tab gets the run's settings and
final figures."""

import importlib.util
import json
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from lightning_app.main import main
from tests.test_cli import run_config  # noqa: F401 (the tiny CLI config fixture)

TRACKERS = Path(__file__).resolve().parents[1] / "configs" / "trackers"


def needs(package: str):
    return pytest.mark.skipif(importlib.util.find_spec(package) is None,
                              reason=f"{package} is not installed (pip install 'lightning-sft[trackers]')")


def fit_with(run_config, tracker: str | None = None) -> None:
    main(["fit", "--config", run_config, *(["--config", str(TRACKERS / tracker)] if tracker else [])])


def test_csv_tracker_writes_metrics_csv_with_losses_and_final_figures(run_config, tmp_path):
    fit_with(run_config, "csv.yaml")
    run = tmp_path / "runs" / "tiny" / "fit"
    header, *rows = (run / "metrics.csv").read_text().splitlines()
    columns = header.split(",")
    assert {"train/loss", "val/loss", "hparams/final_val_loss", "hparams/tokens_per_second"} <= set(columns)
    loss_steps = [row.split(",")[columns.index("train/loss")] for row in rows]
    assert len([value for value in loss_steps if value]) == 2  # max_steps 2, logged every step
    summary = json.loads((run / "summary.json").read_text())  # the run folder is the CSV logger's
    final_val = [row.split(",")[columns.index("hparams/final_val_loss")] for row in rows]
    assert float(next(value for value in final_val if value)) == pytest.approx(summary["final_val_loss"])
    assert "method: LoraConfig" in (run / "hparams.yaml").read_text()
    assert (run / "checkpoints" / "last.ckpt").is_file()


@needs("mlflow")
def test_mlflow_tracker_writes_a_local_file_store(run_config, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses file stores otherwise
    fit_with(run_config, "mlflow.yaml")
    (metric_file,) = (tmp_path / "mlruns").glob("*/*/metrics/train/loss")
    assert len(metric_file.read_text().splitlines()) == 2  # "<time> <value> <step>" per optimizer step
    run = metric_file.parents[2]
    assert (run / "params" / "method").read_text() == "LoraConfig"
    assert float((run / "metrics" / "hparams" / "final_val_loss").read_text().split()[1]) > 0


@needs("wandb")
def test_wandb_offline_tracker_writes_an_offline_run(run_config, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    fit_with(run_config, "wandb_offline.yaml")
    import wandb

    wandb.finish()  # what the end of the `sft` process does (wandb's exit hook); a test process goes on
    (run_dir,) = (tmp_path / "runs" / "wandb").glob("offline-run-*")
    (run_file,) = run_dir.glob("run-*.wandb")
    records = written_by_wandb_core(run_file)  # protobuf records: the keys are stored as plain strings
    for key in (b"train/loss", b"val/loss", b"hparams/final_val_loss", b"LoraConfig"):
        assert key in records, key


def written_by_wandb_core(run_file: Path, seconds: float = 30.0) -> bytes:
    """The run file once wandb's writer process has closed it: it may still be writing when finish returns."""
    deadline = time.monotonic() + seconds
    while b"train/loss" not in (records := run_file.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return records


def test_tensorboard_hparams_tab_has_settings_and_final_figures(run_config, tmp_path):
    fit_with(run_config)  # the default logger: TensorBoard
    run = tmp_path / "runs" / "tiny" / "fit"
    events = EventAccumulator(str(run))  # the session is in the run folder itself: its row is the run
    events.Reload()
    hparams_tags = events.PluginTagToContent("hparams")
    # no experiment description of its own: TensorBoard builds the table from every run's sessions, with
    # each run's scalars as metric columns (docs/tensorboard.md, "HParams")
    assert set(hparams_tags) == {"_hparams_/session_start_info", "_hparams_/session_end_info"}
    assert {"val/loss", "val/best_loss", "train/loss_epoch"} <= set(events.Tags()["scalars"])
    start = plugin_data_pb2.HParamsPluginData.FromString(hparams_tags["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["method"].string_value == "LoraConfig" and hparams["peft_r"].number_value == 4
    assert hparams["lr"].number_value == pytest.approx(1e-3) and hparams["batch_size"].number_value == 2
    summary = json.loads((run / "summary.json").read_text())
    final_val = events.Scalars("val/loss")[-1]  # what the HParams tab shows: the metric tag's last value
    assert final_val.value == pytest.approx(summary["final_val_loss"])
