"""Memory, throughput and run-summary callbacks: what they log, what they count, what they write."""

import json
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.fabric.utilities.throughput import measure_flops
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from peft import LoraConfig, get_peft_model
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from callbacks.memory import MemoryMonitor
from callbacks.run_figures import published
from callbacks.run_summary import RunSummary
from callbacks.throughput import (SFTThroughputMonitor, compute_dtype, forward_flops, peak_flops_per_second,
                                  real_tokens_in, training_flops)
from core.constants import IGNORE_INDEX
from modules.backbone.loading import load_causal_lm
from modules.heads.kept_logits import forward_keeping, next_token_labels
from tests.factories import QA_RECORDS, qa_datamodule, quiet_trainer, sft_module, write_jsonl

TRAIN_BATCHES = 3  # of 2 rows: 6 of the 8 QA records, whose answers differ in length, so batches are padded
ADAMW = partial(torch.optim.AdamW, lr=2e-3)


class BatchRecorder(Callback):
    """Keeps the attention masks of the training batches, to count their tokens independently."""

    def __init__(self):
        self.attention_masks = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.attention_masks.append(batch["attention_mask"].clone())


def fit_with_metrics(model_dir, tmp_path, name: str, accelerator: str = "cpu", **module_kwargs):
    data_path = write_jsonl(tmp_path / "train.jsonl", QA_RECORDS)
    module = sft_module(model_dir, optimizer=ADAMW, **module_kwargs)
    callbacks = [MemoryMonitor(), SFTThroughputMonitor(), RunSummary(), BatchRecorder()]
    trainer = quiet_trainer(
        accelerator=accelerator, logger=TensorBoardLogger(tmp_path / "runs", name=name), callbacks=callbacks,
        max_epochs=1, limit_train_batches=TRAIN_BATCHES, limit_val_batches=2, log_every_n_steps=1)
    trainer.fit(module, qa_datamodule(model_dir, data_path, batch_size=2, val_path=data_path))
    return trainer, module, callbacks


def logged_scalars(log_dir) -> dict[str, list[float]]:
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [event.value for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def written_summary(trainer) -> dict:
    return json.loads(Path(trainer.log_dir, "summary.json").read_text())


def table_cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    torch.manual_seed(0)
    return fit_with_metrics(tiny_model_dir, tmp_path_factory.mktemp("lora"), "lora",
                            peft_config=LoraConfig(r=4, lora_alpha=8))


# Logged keys -------------------------------------------------------------------------------------
def test_promised_keys_are_logged_with_positive_values(lora_run):
    trainer, _, _ = lora_run
    scalars = logged_scalars(trainer.log_dir)
    for key in ["memory/cpu_peak_rss_mib", "time/epoch_seconds", "time/step_seconds",
                "throughput/tokens_per_second", "throughput/samples_per_second"]:
        assert key in scalars, (key, sorted(scalars))
        assert all(value > 0 for value in scalars[key]), (key, scalars[key])
    assert "throughput/mfu" not in scalars  # a CPU's peak FLOP/s is unknown
    assert not any(key.startswith(("train/device/", "validate/")) for key in scalars)  # one speed family: ours
    assert not any(key.startswith("memory/") and "allocated" in key for key in scalars)  # no GPU figures on CPU


def test_epoch_figures_agree_with_each_other(lora_run):
    trainer, _, (_, throughput, _, recorder) = lora_run
    figures = throughput.summary
    assert trainer.global_step == TRAIN_BATCHES
    assert figures["step_seconds"] == pytest.approx(figures["epoch_seconds"] / TRAIN_BATCHES)
    assert figures["samples_per_second"] == pytest.approx(2 * TRAIN_BATCHES / figures["epoch_seconds"])
    assert figures["tokens_per_second"] == pytest.approx(figures["epoch_tokens"] / figures["epoch_seconds"])
    # the first step (compile time, allocator warm-up) apart, and the steady rate of the steps after it
    assert 0 < figures["first_step_seconds"] < figures["epoch_seconds"]
    first_step_tokens = int(recorder.attention_masks[0].sum())  # one batch per optimizer step here
    assert figures["tokens_per_second_after_first_step"] == pytest.approx(
        (figures["epoch_tokens"] - first_step_tokens) / (figures["epoch_seconds"] - figures["first_step_seconds"]))


# Real tokens, not padding ----------------------------------------------------------------------------
def test_real_tokens_of_a_padded_batch_are_the_attention_mask_ones():
    batch = {"input_ids": torch.full((2, 5), 7), "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])}
    assert real_tokens_in(batch) == 8  # not input_ids.numel() == 10


def test_tokens_per_second_counts_only_real_tokens_of_the_trained_batches(lora_run):
    trainer, _, (_, throughput, _, recorder) = lora_run
    real_tokens = sum(int(mask.sum()) for mask in recorder.attention_masks)
    padded_tokens = sum(mask.numel() for mask in recorder.attention_masks)
    assert len(recorder.attention_masks) == TRAIN_BATCHES
    assert real_tokens < padded_tokens  # the batches did hold padding, so the check can tell them apart
    assert throughput.summary["epoch_tokens"] == real_tokens


# FLOPs estimate behind MFU ---------------------------------------------------------------------------
@pytest.mark.parametrize("lora, tolerance", [(False, 0.01), (True, 0.05)])
def test_flops_estimate_matches_torch_flop_counter(tiny_model_dir, lora, tolerance):
    """Eager attention, so the counter sees the score matmuls. For LoRA, 6·N·T would be ~34% off here;
    4·N·T over-counts only the input gradients layer 0 never needs. The output layer runs on the
    trained positions only (the last 10 of each row here)."""
    model = load_causal_lm(str(tiny_model_dir), attn_implementation="eager")
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    input_ids = torch.randint(0, 250, (3, 40))
    labels = input_ids.masked_fill(torch.arange(40) < 30, IGNORE_INDEX)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    targets = next_token_labels(labels)
    forward = lambda: forward_keeping(model, batch, targets != IGNORE_INDEX, targets).logits  # noqa: E731
    measured_training = measure_flops(model, forward, loss_fn=torch.Tensor.sum)
    measured_forward = measure_flops(model, forward)
    assert training_flops(model, batch) == pytest.approx(measured_training, rel=tolerance)
    assert forward_flops(model, batch) == pytest.approx(measured_forward, rel=0.01)


def test_mfu_uses_the_weights_dtype_when_the_trainer_runs_in_float32(tiny_model_dir):
    model = load_causal_lm(str(tiny_model_dir), dtype="bfloat16")
    assert compute_dtype(torch.float32, model) == torch.bfloat16
    assert compute_dtype(torch.float16, model) == torch.float16  # a mixed-precision plugin decides
    assert compute_dtype(torch.float32, load_causal_lm(str(tiny_model_dir))) == torch.float32


# Memory windows ------------------------------------------------------------------------------------
def test_gpu_peaks_of_a_fit_survive_the_resets_at_each_epoch(monkeypatch):
    """CUDA has one peak counter; faked here so the window logic is checked without a GPU."""
    counter = {"peak": 0.0}
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: counter.update(peak=100 * 2**20))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: counter["peak"])
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device: 2 * counter["peak"])
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)), loggers=[],
                              is_global_zero=True, global_step=0, lightning_module=SimpleNamespace())
    monitor = MemoryMonitor()
    monitor.on_fit_start(trainer, None)
    counter["peak"] = 700 * 2**20  # e.g. the sanity-check validation, before the first epoch opens
    for epoch_peak_mib in (500, 300):
        monitor.on_train_epoch_start(trainer, None)
        counter["peak"] = epoch_peak_mib * 2**20
        monitor.on_train_epoch_end(trainer, None)
        assert monitor.summary["train_epoch_peak_allocated_mib"] == epoch_peak_mib  # its own epoch, not the first's
    monitor.on_fit_end(trainer, None)
    assert monitor.summary["fit_peak_allocated_mib"] == 700  # though reset when the first epoch began
    assert monitor.summary["fit_peak_reserved_mib"] == 1400
    assert published(trainer.lightning_module, "memory") == monitor.summary  # what the run summary reads


# summary.json and summary.md -----------------------------------------------------------------------
def test_summary_json_holds_every_promised_figure(lora_run):
    trainer, module, (_, throughput, _, _) = lora_run
    summary = written_summary(trainer)
    assert summary["run"] == "lora/version_0"
    assert summary["method"] == "LoraConfig"
    assert (summary["optimizer"], summary["lr"]) == ("AdamW", 2e-3)  # the configured lr, not the decayed one
    assert summary["trainable_percent"] == pytest.approx(100 * module.trainable_share)
    assert 0 < summary["trainable_percent"] < 50
    assert summary["peak_memory_kind"] == "cpu_rss" and summary["peak_memory_mib"] > 10
    assert summary["epoch_seconds"] == throughput.summary["epoch_seconds"] > 0
    assert summary["tokens_per_second"] == throughput.summary["tokens_per_second"] > 0
    assert summary["step_seconds"] > 0 and summary["samples_per_second"] > 0 and summary["mfu"] is None
    assert summary["final_train_loss"] == pytest.approx(float(trainer.callback_metrics["train/loss_epoch"]))
    assert summary["final_val_loss"] == pytest.approx(float(trainer.callback_metrics["val/loss"]))
    assert 0 < summary["final_val_loss"] < 20 and isinstance(summary["last_step_train_loss"], float)
    assert (summary["test_metrics"], summary["global_step"]) == ({}, TRAIN_BATCHES)
    assert not list(Path(trainer.log_dir).glob(".summary*.tmp"))  # the atomic writes left no temporary file
    # A full fine-tuning run is summarised as method "full", 100% trainable: see tests/test_compare.py.


def test_summary_markdown_table_has_a_header_and_one_row_of_the_same_width(lora_run):
    trainer, module, _ = lora_run
    lines = Path(trainer.log_dir, "summary.md").read_text().splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 3  # header, rule, one run
    header, row = table_cells(table[0]), table_cells(table[2])
    assert len(header) == len(row) == 9
    cell = dict(zip(header, row))
    assert (cell["run"], cell["method"], cell["optimizer"]) == ("lora/version_0", "LoraConfig", "AdamW (lr 0.002)")
    assert float(cell["trainable %"]) == pytest.approx(100 * module.trainable_share, abs=1e-3)
    assert cell["peak memory (MiB)"].endswith("(CPU RSS)") and float(cell["tokens/s"]) > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA memory statistics and MFU need a CUDA GPU")
def test_gpu_run_logs_peak_memory_and_mfu(tiny_model_dir, tmp_path):
    trainer, _, (memory, throughput, _, _) = fit_with_metrics(tiny_model_dir, tmp_path, "gpu", accelerator="gpu")
    scalars = logged_scalars(trainer.log_dir)
    for key in ["memory/train_epoch_peak_allocated_mib", "memory/train_epoch_peak_reserved_mib",
                "memory/fit_peak_allocated_mib", "memory/fit_peak_reserved_mib"]:
        assert scalars[key][-1] > 0, key
    assert memory.summary["fit_peak_reserved_mib"] >= memory.summary["fit_peak_allocated_mib"]
    assert memory.summary["fit_peak_allocated_mib"] >= memory.summary["train_epoch_peak_allocated_mib"]
    if peak_flops_per_second(trainer, trainer.lightning_module):  # a GPU in Lightning's table of peak FLOP/s
        assert 0 < scalars["throughput/mfu"][-1] < 1
    summary = written_summary(trainer)
    assert summary["peak_memory_kind"] == "gpu_allocated"
