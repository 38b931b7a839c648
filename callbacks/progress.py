"""Progress a person can follow, in a terminal and in a log file.

- In a terminal (stdout is a TTY) Lightning's progress bar stays, and gets what it lacks: in
  training ``tok/s`` (real tokens per second since the fit started, padding not counted) and
  ``eta_min`` (minutes left for the whole fit, not just the epoch the bar counts); in ``predict`` and
  ``test`` the records answered out of all (the bar itself counts batches).
- Without one (CI, ``nohup``, a scheduler's log file) the bar is switched off (its carriage-return
  redraws make an unreadable log) and one plain line is printed instead, whenever the run passes
  another ``every_percent`` of its total or ``every_seconds`` have gone by since the last line,
  whichever comes first; so a log gets at most 100 / every_percent lines plus one per
  ``every_seconds``::

      fit: step 2/4 (50%) | 1,234 tok/s | loss 3.214 | elapsed 0:00:05 | eta 0:00:05
      predict: 16/40 records (40%) | elapsed 0:00:31 | eta 0:00:46

``--trainer.enable_progress_bar false`` silences both.
"""

import sys
import time
from datetime import timedelta
from typing import Literal

from lightning.pytorch.callbacks import Callback, TQDMProgressBar

from core.batch_layout import real_tokens_in

ProgressMode = Literal["auto", "bar", "lines"]


class ProgressReport(Callback):
    def __init__(self, mode: ProgressMode = "auto", every_seconds: float = 30.0, every_percent: float = 10.0):
        """
        Args:
            mode: ``bar``: Lightning's progress bar with tokens/s and ETA; ``lines``: a plain line at a
                bounded rate; ``auto``: the bar when stdout is a terminal, lines otherwise.
            every_seconds: In lines mode, the longest wait between two lines.
            every_percent: In lines mode, a line each time the run passes another this many percent.
        """
        if every_seconds <= 0 or not 0 < every_percent <= 100:
            raise ValueError(f"progress: every_seconds must be > 0 and every_percent in (0, 100], got "
                             f"{every_seconds} and {every_percent}")
        self.mode, self.every_seconds, self.every_percent = mode, every_seconds, every_percent
        self.lines_mode = False
        self._run = _RunClock(0)

    def setup(self, trainer, pl_module, stage: str) -> None:
        bar = trainer.progress_bar_callback  # None with enable_progress_bar false: then stay silent too
        self.lines_mode = bar is not None and (self.mode == "lines" or (self.mode == "auto" and not stdout_is_terminal()))
        if self.lines_mode:
            bar.disable()

    # Training ------------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        self._run = _RunClock(int(trainer.estimated_stepping_batches), start=trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: dict, batch_idx: int) -> None:
        self._run.tokens += real_tokens_in(batch)
        if trainer.global_step == self._run.done:
            return  # inside a gradient-accumulation window: no optimizer step yet
        self._run.done = trainer.global_step
        tokens_per_second, seconds_left = self._run.tokens_per_second(), self._run.seconds_left()
        if not self.lines_mode and trainer.progress_bar_callback is not None:
            pl_module.log("tok/s", tokens_per_second, prog_bar=True, logger=False, on_step=True, on_epoch=False)
            pl_module.log("eta_min", seconds_left / 60, prog_bar=True, logger=False, on_step=True, on_epoch=False)
            return
        loss = trainer.callback_metrics.get("train/loss")
        details = [f"{tokens_per_second:,.0f} tok/s"] + ([f"loss {float(loss):.4g}"] if loss is not None else [])
        self._maybe_print(trainer, f"fit: step {self._run.done}/{self._run.total}", details)

    # Predict and test: records answered out of all ----------------------------------------------
    def on_predict_start(self, trainer, pl_module) -> None:
        self._run = _RunClock(records_in(trainer.predict_dataloaders))

    def on_test_start(self, trainer, pl_module) -> None:
        self._run = _RunClock(records_in(trainer.test_dataloaders))

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0):
        self._answered(trainer, batch, "predict")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0):
        self._answered(trainer, batch, "test")

    def _answered(self, trainer, batch: dict, stage: str) -> None:
        self._run.done += len(batch["ids"]) if "ids" in batch else int(batch["input_ids"].shape[0])
        answered = f"{self._run.done}/{self._run.total} records"
        bar = trainer.progress_bar_callback
        if self.lines_mode:
            self._maybe_print(trainer, f"{stage}: {answered}", [])
        elif isinstance(bar, TQDMProgressBar):  # shown beside the bar's own batch count
            (bar.predict_progress_bar if stage == "predict" else bar.test_progress_bar).set_postfix_str(answered)

    # Lines mode ----------------------------------------------------------------------------------
    def _maybe_print(self, trainer, head: str, details: list[str]) -> None:
        run = self._run
        if run.printed_percent_step is None:  # a resumed fit starts part-way: count from where it is
            run.printed_percent_step = int(100 * run.start / run.total // self.every_percent)
        percent_step = int(run.percent() // self.every_percent)
        due = percent_step > run.printed_percent_step or time.monotonic() - run.printed_at >= self.every_seconds
        if not due or not trainer.is_global_zero:
            return
        run.printed_percent_step, run.printed_at = percent_step, time.monotonic()
        timing = [f"elapsed {_clock(run.elapsed())}", f"eta {_clock(run.seconds_left())}"]
        print(" | ".join([f"{head} ({run.percent():.0f}%)", *details, *timing]), flush=True)


class _RunClock:
    """How far a stage is (optimizer steps, or records answered) and how fast it goes."""

    def __init__(self, total: int, start: int = 0):
        self.total, self.start, self.done, self.tokens = max(total, 1), start, start, 0
        self.started = time.monotonic()
        self.printed_at, self.printed_percent_step = self.started, None  # None: set at the first check

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def percent(self) -> float:
        return 100 * self.done / self.total

    def tokens_per_second(self) -> float:
        return self.tokens / max(self.elapsed(), 1e-9)

    def seconds_left(self) -> float:
        done_here = self.done - self.start
        return self.elapsed() / done_here * (self.total - self.done) if done_here > 0 else float("nan")


def records_in(loaders) -> int:
    """Records a stage's loaders will answer: the sizes of their batches' index lists where the batch
    sampler keeps them (``batches``, with records answered by an interrupted run left out), else the
    dataset's length. Never iterates a sampler: Lightning's wrapper shares one iterator with the loop."""
    total = 0
    for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
        batches = getattr(getattr(loader, "batch_sampler", None), "batches", None)
        total += sum(len(rows) for rows in batches) if batches is not None else len(loader.dataset)
    return total


def stdout_is_terminal() -> bool:
    return bool(getattr(sys.stdout, "isatty", lambda: False)())


def _clock(seconds: float) -> str:
    """``0:01:05``; ``?`` before the first step has given a speed."""
    return "?" if seconds != seconds else str(timedelta(seconds=round(seconds)))
