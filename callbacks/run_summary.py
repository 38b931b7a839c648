"""One file per run that says what was trained and how it went: ``summary.json`` and ``summary.md``.

Written into ``trainer.log_dir`` (``runs/<name>/fit/``) when a fit ends, and again when a
test on the same Trainer ends, to add its ``test/...`` metrics. ``sft compare`` reads the json of
several runs; the Markdown is the same table with one row, for a person opening the folder.

Fields of ``summary.json`` (None where the figure was not measured):

- ``method``: the PEFT config's class name (``LoraConfig``, ...) or ``full``;
- ``optimizer`` and ``lr``: the optimizer's class name and its configured (not decayed) learning rate;
- ``trainable_percent``: trainable parameters as a share of all, in percent;
- ``peak_memory_mib`` and ``peak_memory_kind``: the fit's peak GPU memory allocated
  (``gpu_allocated``) or, on a CPU, the process's peak resident memory (``cpu_rss``), from
  ``MemoryMonitor``; ``memory`` holds all of its figures;
- ``epoch_seconds``, ``step_seconds``, ``tokens_per_second``, ``samples_per_second``, ``mfu``: the
  last epoch's, from ``SFTThroughputMonitor`` (tokens are real tokens, not padding);
- ``final_train_loss``: the last epoch's token-weighted train loss; ``last_step_train_loss``: its
  last logged step's; ``final_val_loss``: the last validation's;
- ``test_metrics``: every ``test/...`` metric, when a test ran;
- ``epochs``, ``global_step``: how far training went.

At the end of a fit the hyperparameters that tell runs apart (method, model, optimizer, lr, batch,
...) go to every logger with the final figures (``hparams/final_val_loss``, ...): to TensorBoard as an
HParams session in ``<run>/hparams`` (its own folder: TensorBoard keeps only the first session a
folder holds, and Lightning writes one without metrics when the fit starts), so the HParams tab
lines runs up as a table; to the other trackers as params plus metrics.
"""

import json
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from core.files import write_text_atomically

from callbacks.run_figures import published
from evaluation.run_table import summary_markdown

class RunSummary(Callback):
    def teardown(self, trainer, pl_module, stage: str) -> None:
        """After every ``on_fit_end``/``on_test_end``, so the memory monitor has closed its windows."""
        if stage not in ("fit", "test"):
            return
        folder = Path(trainer.log_dir)  # a broadcast under DDP: every rank must ask, or the next one hangs
        if not trainer.is_global_zero:
            return
        folder.mkdir(parents=True, exist_ok=True)
        summary = build_summary(trainer, pl_module, f"{folder.parent.name}/{folder.name}")
        if stage == "test":
            summary = _keep_training_figures(folder / "summary.json", summary)
        write_text_atomically(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
        write_text_atomically(folder / "summary.md", summary_markdown(summary))
        if stage == "fit":
            log_hparams_with_final_metrics(trainer, pl_module, summary)


def build_summary(trainer, pl_module, run_name: str) -> dict:
    memory, speed = published(pl_module, "memory"), published(pl_module, "speed")
    optimizer = trainer.optimizers[0] if trainer.optimizers else None
    return {
        "run": run_name,
        "method": type(pl_module.peft_config).__name__ if pl_module.peft_config is not None else "full",
        "optimizer": type(optimizer).__name__ if optimizer else None,
        "lr": _configured_lr(optimizer),
        "trainable_percent": 100 * pl_module.trainable_share,
        **_peak_memory(memory),
        "memory": memory,
        **{name: speed.get(name) for name in
           ("epoch_seconds", "step_seconds", "tokens_per_second", "samples_per_second", "mfu")},
        "final_train_loss": _metric(trainer, "train/loss_epoch"),
        "last_step_train_loss": _metric(trainer, "train/loss_step"),
        "final_val_loss": _metric(trainer, "val/loss"),
        "test_metrics": {name: float(value) for name, value in trainer.callback_metrics.items()
                         if name.startswith("test/")},
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
    }


def _peak_memory(memory_summary: dict[str, float]) -> dict:
    if "fit_peak_allocated_mib" in memory_summary:
        return {"peak_memory_mib": memory_summary["fit_peak_allocated_mib"], "peak_memory_kind": "gpu_allocated"}
    if "cpu_peak_rss_mib" in memory_summary:
        return {"peak_memory_mib": memory_summary["cpu_peak_rss_mib"], "peak_memory_kind": "cpu_rss"}
    return {"peak_memory_mib": None, "peak_memory_kind": None}


def _keep_training_figures(summary_path: Path, test_summary: dict) -> dict:
    """A test after a fit adds its metrics; the fit's losses and speed stay as they were."""
    if not summary_path.exists():
        return test_summary
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    summary["test_metrics"] = test_summary["test_metrics"]
    return summary


def _configured_lr(optimizer) -> float | None:
    """The lr the optimizer was built with (a tensor for some fused optimizers), not the schedule's last."""
    lr = optimizer.defaults.get("lr") if optimizer is not None else None
    return None if lr is None else float(lr)


def _metric(trainer, name: str) -> float | None:
    value = trainer.callback_metrics.get(name)
    return None if value is None else float(value)


# The HParams tab ---------------------------------------------------------------------------------
FINAL_METRICS = ("final_train_loss", "final_val_loss", "tokens_per_second", "epoch_seconds", "peak_memory_mib")


def run_hparams(trainer, pl_module, summary: dict) -> dict:
    """What tells runs apart, flat and scalar (TensorBoard's HParams tab takes str, number, bool)."""
    datamodule, peft_config = trainer.datamodule, pl_module.peft_config
    params = {
        "model": str(pl_module.model_name_or_path), "method": summary["method"], "optimizer": summary["optimizer"],
        "lr": summary["lr"], "lr_schedule": getattr(pl_module, "lr_schedule", None),
        "warmup": getattr(pl_module, "warmup", None), "precision": str(trainer.precision),
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "batch_size": getattr(datamodule, "batch_size", None), "max_length": getattr(datamodule, "max_length", None),
        "padding_free": getattr(datamodule, "padding_free", None),
        "max_tokens_per_batch": getattr(datamodule, "max_tokens_per_batch", None),
        "trainable_percent": summary["trainable_percent"],
    }
    for name in ("r", "lora_alpha", "lora_dropout", "num_virtual_tokens"):  # the PEFT method's size, where it has one
        if isinstance(getattr(peft_config, name, None), (int, float)):
            params[f"peft_{name}"] = getattr(peft_config, name)
    return {name: value for name, value in params.items() if value is not None}


def final_metrics(trainer, summary: dict) -> dict[str, float]:
    metrics = {f"hparams/{name}": float(summary[name]) for name in FINAL_METRICS if summary.get(name) is not None}
    score = trainer.callback_metrics.get("val/overall/score")  # validation answers' task metric, when on
    if score is not None:
        metrics["hparams/val_overall_score"] = float(score)
    return metrics


def log_hparams_with_final_metrics(trainer, pl_module, summary: dict) -> None:
    params, metrics = run_hparams(trainer, pl_module, summary), final_metrics(trainer, summary)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            write_hparams_session(Path(logger.log_dir) / "hparams", params, metrics, trainer.global_step)
        else:
            logger.log_hyperparams(params)
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()


def write_hparams_session(folder: Path, params: dict, metrics: dict[str, float], step: int) -> None:
    """One TensorBoard HParams session (hyperparameters, the metric tags and their values) in ``folder``."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    with SummaryWriter(log_dir=str(folder)) as writer:
        for summary in hparams(params, metrics):  # experiment, session start, session end
            writer.file_writer.add_summary(summary)
        for name, value in metrics.items():
            writer.add_scalar(name, value, step)
