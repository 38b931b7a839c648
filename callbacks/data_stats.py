"""Logs what preprocessing did to each split (kept, truncated, dropped, lengths) to TensorBoard.

The same figures are printed when the splits are built; logging them keeps them with the run, so
a person comparing runs sees when one of them silently lost examples to ``max_length``.
"""

from dataclasses import asdict

from lightning.pytorch.callbacks import Callback


class DataStatsLogger(Callback):
    def on_fit_start(self, trainer, pl_module) -> None:
        stats_by_split = getattr(trainer.datamodule, "token_stats", {}) if trainer.datamodule else {}
        if not trainer.loggers or not stats_by_split:
            return
        metrics = {
            f"data/{split}_{name}": float(value)
            for split, stats in stats_by_split.items()
            for name, value in asdict(stats).items()
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=0)
