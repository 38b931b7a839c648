"""The HParams table: what tells runs apart (model, PEFT method and size, optimizer and lr, batch,
accumulation, precision, max length, budget, seed, data kept) beside what they achieved.

Written at the end of a fit, and of a test in a run folder of its own (``callbacks/run_summary.py``).
In TensorBoard, one HParams session in the run folder itself (so the table's rows are the runs
``tensorboard --logdir runs`` lists: ``demo/fit``, ``demo/test-tuned``, ...), plus ``val/best_loss``
(the lowest validation loss) as a scalar beside the run's others. The session carries no
experiment description of its own: TensorBoard takes the whole table's columns from the first run's
description it finds, so with one per run a fit's ``lr`` and ``val/loss`` went missing beside the
tests' metrics. Without one, TensorBoard builds the table from every run: the union of their
hyperparameters (those that differ between runs first) and every scalar tag as a metric at its last
value (a fit's ``val/loss``, ``val/best_loss``, ``train/loss_epoch``, tokens/s; a test's loss and
each type's metric). No placeholder ``hp_metric`` of -1: the CLI's TensorBoard loggers are built with
``default_hp_metric=False``, so this is the run's only session (TensorBoard reads a run's first): a
resumed fit replaces it. The other trackers get params plus the results as metrics named
``hparams/<summary field>`` (``hparams/final_val_loss``, ``hparams/test_choice_accuracy``, ...).
"""

import os
from pathlib import Path

from lightning.pytorch.loggers import TensorBoardLogger

# summary.json field -> the fit's scalar tag that holds it (at its last value)
FIT_RESULT_TAGS = {"final_val_loss": "val/loss", "best_val_loss": "val/best_loss", "final_train_loss": "train/loss_epoch",
                   "tokens_per_second": "throughput/tokens_per_second", "epoch_seconds": "time/epoch_seconds"}
PEAK_MEMORY_TAGS = {"gpu_allocated": "memory/fit_peak_allocated_mib", "cpu_rss": "memory/cpu_peak_rss_mib"}
PEFT_SIZES = ("r", "lora_alpha", "lora_dropout", "num_virtual_tokens")  # a PEFT method's size, where it has one
COUNTS = ("/count", "/samples", "/passed")  # how many records or samples a test metric is over: not a result
HPARAMS_EVENTS_SUFFIX = ".hparams"  # the events file holding a run's HParams session (one per run folder)


def run_hparams(trainer, pl_module, summary: dict) -> dict:
    """What tells runs apart, flat and scalar (TensorBoard's HParams tab takes str, number, bool)."""
    datamodule, peft_config = trainer.datamodule, pl_module.peft_config
    params = {
        "model": str(pl_module.model_name_or_path), "method": summary["method"], "optimizer": summary["optimizer"],
        "lr": summary["lr"], "lr_schedule": getattr(pl_module, "lr_schedule", None),
        "warmup": getattr(pl_module, "warmup", None), "precision": str(trainer.precision),
        "batch_size": getattr(datamodule, "batch_size", None), "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "max_length": getattr(datamodule, "max_length", None), "padding_free": getattr(datamodule, "padding_free", None),
        "max_tokens_per_batch": getattr(datamodule, "max_tokens_per_batch", None),
        "max_steps": trainer.max_steps if trainer.max_steps >= 0 else None, "max_epochs": trainer.max_epochs,
        "gradient_clip_val": trainer.gradient_clip_val, "seed": _seed(),
        "trainable_parameters": getattr(pl_module, "trainable_parameters", None),
        "trainable_percent": summary["trainable_percent"],
    }
    params.update({f"peft_{name}": getattr(peft_config, name) for name in PEFT_SIZES
                   if isinstance(getattr(peft_config, name, None), (int, float))})
    for split, stats in (getattr(datamodule, "token_stats", None) or {}).items():  # what the data kept
        params.update({f"{split}_examples": stats.kept, f"{split}_truncated": stats.truncated})
    return {name: value for name, value in params.items() if value is not None}


def _seed() -> int | None:
    """The run's seed (``seed_everything``), as Lightning records it for its worker processes."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    return int(seed) if seed is not None else None


def run_results(trainer, summary: dict) -> list[tuple[str, str, float]]:
    """The run's results as (name for the other trackers, TensorBoard scalar tag, final value)."""
    fields = dict(FIT_RESULT_TAGS)
    if summary.get("peak_memory_kind") in PEAK_MEMORY_TAGS:
        fields["peak_memory_mib"] = PEAK_MEMORY_TAGS[summary["peak_memory_kind"]]
    results = [(field, tag, float(summary[field])) for field, tag in fields.items() if summary.get(field) is not None]
    for tag, value in trainer.callback_metrics.items():  # a test's metrics; a fit's validation answers' score
        if (tag.startswith("test/") and not tag.endswith(COUNTS)) or tag == "val/overall/score":
            results.append((tag.replace("/", "_"), tag, float(value)))
    return results


def log_run_hparams(trainer, pl_module, summary: dict) -> None:
    params, results = run_hparams(trainer, pl_module, summary), run_results(trainer, summary)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            write_hparams_session(Path(logger.log_dir), params, summary.get("best_val_loss"), trainer.global_step)
        else:
            logger.log_hyperparams(params)
            logger.log_metrics({f"hparams/{name}": value for name, _, value in results}, step=trainer.global_step)
            logger.save()


def write_hparams_session(folder: Path, params: dict, best_val_loss: float | None, step: int) -> None:
    """One TensorBoard HParams session (its start and end, no experiment description) in the run
    ``folder``, and ``val/best_loss``.

    In an events file of its own (``*.hparams``), which replaces the one an earlier fit of the same run
    wrote: TensorBoard keeps the first session a run folder holds, so a resumed fit's would be ignored and
    the table would show the first fit's settings (``max_steps`` 2 of a run resumed to 4). The best
    validation loss survives in the checkpoint (``run_summary.py``), so the new file's is the run's best."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    for earlier in folder.glob(f"events.out.tfevents.*{HPARAMS_EVENTS_SUFFIX}"):
        earlier.unlink()
    _, session_start, session_end = hparams(params, {})  # the first is the experiment description
    with SummaryWriter(log_dir=str(folder), filename_suffix=HPARAMS_EVENTS_SUFFIX) as writer:
        writer.file_writer.add_summary(session_start)
        writer.file_writer.add_summary(session_end)
        if best_val_loss is not None:
            writer.add_scalar(FIT_RESULT_TAGS["best_val_loss"], best_val_loss, step)
