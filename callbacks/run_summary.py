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
  last logged step's; ``final_val_loss``: the last validation's; ``best_val_loss``: the lowest;
- ``test_metrics``: every ``test/...`` metric, when a test ran;
- ``epochs``, ``global_step``: how far training went.

At the end of a fit, and of a test in a run of its own, the hyperparameters that tell runs apart and
the run's results go to every logger (``run_hparams.py``), so TensorBoard's HParams tab lines runs
up as a table.
"""

import json
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from core.files import write_text_atomically

from callbacks.run_figures import published
from callbacks.run_hparams import log_run_hparams
from evaluation.run_table import summary_markdown

class RunSummary(Callback):
    def __init__(self):
        self.best_val_loss: float | None = None  # over every validation of the fit, resumes included

    def on_validation_end(self, trainer, pl_module) -> None:
        loss = _metric(trainer, "val/loss")
        if not trainer.sanity_checking and loss is not None:
            self.best_val_loss = loss if self.best_val_loss is None else min(self.best_val_loss, loss)

    def state_dict(self) -> dict:
        return {"best_val_loss": self.best_val_loss}  # in the checkpoint: a resumed fit keeps its best

    def load_state_dict(self, state_dict: dict) -> None:
        self.best_val_loss = state_dict.get("best_val_loss")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        """After every ``on_fit_end``/``on_test_end``, so the memory monitor has closed its windows."""
        if stage not in ("fit", "test"):
            return
        folder = Path(trainer.log_dir)  # a broadcast under DDP: every rank must ask, or the next one hangs
        if not trainer.is_global_zero:
            return
        folder.mkdir(parents=True, exist_ok=True)
        summary = build_summary(trainer, pl_module, f"{folder.parent.name}/{folder.name}")
        summary["best_val_loss"] = self.best_val_loss if stage == "fit" else None
        after_a_fit = stage == "test" and (folder / "summary.json").exists()
        if after_a_fit:
            summary = _keep_training_figures(folder / "summary.json", summary)
        write_text_atomically(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
        write_text_atomically(folder / "summary.md", summary_markdown(summary))
        if not after_a_fit:  # TensorBoard keeps a run's first HParams session: the fit's stays
            log_run_hparams(trainer, pl_module, summary)


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
        "last_step_train_loss": _metric(trainer, "train/loss"),
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
