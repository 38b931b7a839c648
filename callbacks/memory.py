"""Peak memory per stage (fit, validate, test, predict) and per training epoch.

On a GPU: the peak memory allocated to tensors (what the run needed) and the peak reserved by
PyTorch's caching allocator (what ``nvidia-smi`` sees, and what runs out first), both in MiB:

    memory/train_epoch_peak_allocated_mib   memory/train_epoch_peak_reserved_mib
    memory/fit_peak_allocated_mib           memory/fit_peak_reserved_mib
    memory/{validate,test,predict}_peak_allocated_mib (and _reserved_mib)

The train-epoch peak covers everything run during the epoch, the validation at its end included.
CUDA keeps a single peak counter, so the windows overlap (a fit holds its epochs): before every
reset the current peak is folded into every window still open, so a fit's peak is never lost to
its epochs' resets.

On a CPU there is no per-stage figure: the only peak is the process's resident memory
(``getrusage(RUSAGE_SELF).ru_maxrss``), which cannot be reset. It is the highest resident size
since the process started, model loading and earlier runs in the same process included; it is
logged as ``memory/cpu_peak_rss_mib`` at the same moments, to make that plain.

The latest figures are kept in ``summary`` (keys without the ``memory/`` prefix) and published as
``run_figures["memory"]`` on the module (``run_figures.py``) for the run summary.
"""

import resource
import sys

import torch
from lightning.pytorch.callbacks import Callback

from callbacks.run_figures import publish

MIB = 2**20


def cpu_peak_rss_mib() -> float:
    """The process's peak resident memory since it started: ru_maxrss is KiB on Linux, bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024


class MemoryMonitor(Callback):
    def __init__(self):
        super().__init__()
        self.summary: dict[str, float] = {}
        self._open_windows: dict[str, dict[str, float]] = {}  # window name -> peaks so far, in MiB
        self._device: torch.device | None = None

    # Windows: a stage, and each training epoch inside a fit ------------------------------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        self._open(trainer, "fit")

    def on_fit_end(self, trainer, pl_module) -> None:
        self._close(trainer, "fit")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._open(trainer, "train_epoch")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._close(trainer, "train_epoch")

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "validate":  # inside a fit, validation belongs to the fit's windows
            self._open(trainer, "validate")

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "validate":
            self._close(trainer, "validate")

    def on_test_start(self, trainer, pl_module) -> None:
        self._open(trainer, "test")

    def on_test_end(self, trainer, pl_module) -> None:
        self._close(trainer, "test")

    def on_predict_start(self, trainer, pl_module) -> None:
        self._open(trainer, "predict")

    def on_predict_end(self, trainer, pl_module) -> None:
        self._close(trainer, "predict")

    # Peaks ----------------------------------------------------------------------------------------
    def _open(self, trainer, window: str) -> None:
        self._device = trainer.strategy.root_device
        if self._device.type != "cuda":
            return
        self._fold_current_peaks()
        self._open_windows[window] = {"allocated": 0.0, "reserved": 0.0}
        torch.cuda.reset_peak_memory_stats(self._device)

    def _close(self, trainer, window: str) -> None:
        if self._device is None or self._device.type != "cuda":
            self._log(trainer, {"cpu_peak_rss_mib": cpu_peak_rss_mib()})
            return
        self._fold_current_peaks()
        peaks = self._open_windows.pop(window, None)
        if peaks is not None:
            self._log(trainer, {f"{window}_peak_{kind}_mib": mib for kind, mib in peaks.items()})

    def _fold_current_peaks(self) -> None:
        """Raise every open window's peaks to CUDA's current peak counters, before they are reset."""
        current = {
            "allocated": torch.cuda.max_memory_allocated(self._device) / MIB,
            "reserved": torch.cuda.max_memory_reserved(self._device) / MIB,
        }
        for peaks in self._open_windows.values():
            for kind, mib in current.items():
                peaks[kind] = max(peaks[kind], mib)

    def _log(self, trainer, figures: dict[str, float]) -> None:
        self.summary.update(figures)
        publish(trainer.lightning_module, "memory", figures)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({f"memory/{name}": mib for name, mib in figures.items()}, step=trainer.global_step)
