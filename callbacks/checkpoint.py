"""The run's checkpoints: Lightning's ``ModelCheckpoint`` plus two things a long run needs.

1. **Preemption.** Schedulers preempt with SIGTERM. Lightning's signal connector only records it
   (``trainer.received_sigterm``; SLURM's requeue is the one case it handles) and its loops raise
   ``SIGTERMException`` at the end of the current training batch (or evaluation batch), which
   exits with status 0 and no checkpoint. Here ``on_exception`` saves ``last.ckpt`` first (written
   under another name and renamed, so a kill during the write leaves the previous one intact),
   prints one line, and the process exits with 143, the shell's code for "ended by SIGTERM"
   (so ``sft fit ... && sft test ...`` does not go on with a half-trained model).

   The save lands between optimizer steps: optimizer and weights are as the last step left them.
   A SIGTERM inside an accumulation window drops that window's gradients, and the module's
   ``on_save_checkpoint`` (``modules/training/resume.py``) counts the epoch's batches up to the last step
   only, so the resumed run replays the window's micro-batches (``--ckpt_path last``).

2. **Mid-epoch ``last.ckpt`` whatever the monitor.** With ``every_n_train_steps`` and a monitor
   logged only by validation (``val/loss``), ``ModelCheckpoint.on_train_batch_end`` holds the whole
   save until validation has run (``_defer_save_until_validation``): a run killed before the
   epoch's validation has no mid-epoch checkpoint at all. ``last.ckpt`` needs no metric, so it is
   written at once; the held top-k save still happens after validation, as before.

3. **Every save is atomic.** Lightning's ``_atomic_save`` (lightning/fabric/utilities/cloud_io.py)
   serialises to memory, writes a ``tempfile.mkstemp()`` file in the system temp directory and
   moves it into place (fsspec's transaction): a rename only where that directory and the run's are
   on one filesystem. Where they are not (``/tmp`` on a local disk or in memory, runs on a shared
   one: the usual cluster), the move is a copy, and a SIGKILL during it leaves a truncated
   ``last.ckpt`` (and a stray file in ``/tmp``). Here every checkpoint is written as
   ``<name>.partial`` beside its final name and renamed with ``os.replace``, which is atomic:
   a kill at any moment leaves the previous ``last.ckpt`` whole. A full disk or an unwritable
   folder removes the ``.partial`` file and ends the run in one line that names the last complete
   checkpoint and how to resume from it (``core/disk_errors.py``).
"""

import os
import shutil
import sys
from pathlib import Path
from weakref import proxy

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from core.disk_errors import checkpoints_intact, removed_on_write_fault, tensor_bytes

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a process ended by SIGTERM


class SFTCheckpoint(ModelCheckpoint):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._held_last_saved_at: int | None = None  # global step of the last early last.ckpt

    @property
    def state_key(self) -> str:
        """ModelCheckpoint's key: checkpoints written before this subclass existed resume with their state."""
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    # 1. Preemption ----------------------------------------------------------------------------
    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            super().on_exception(trainer, pl_module, exception)  # --checkpoint.save_on_exception
            return
        exception.code = PREEMPTED_EXIT_CODE  # Lightning's SIGTERMException exits with 0 otherwise
        if trainer.state.fn != TrainerFn.FITTING or trainer.global_step == 0 or self.dirpath is None:
            _say(trainer, f"sft: stopped by SIGTERM at global step {trainer.global_step}; nothing trained to save")
            return
        path = self._save_last_atomically(trainer)
        _say(trainer, f"sft fit: stopped by SIGTERM at global step {trainer.global_step}; saved {path} "
             "(resume with --ckpt_path last)")

    def _save_last_atomically(self, trainer) -> str:
        path = self.format_checkpoint_name(self._monitor_candidates(trainer), self.CHECKPOINT_NAME_LAST)
        self.last_model_path = path  # part of the saved state, as ModelCheckpoint sets it
        _write_then_rename(trainer, path, self.save_weights_only)
        return path

    # 2. Mid-epoch last.ckpt -----------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._last_held_for_the_monitor(trainer):
            saved_at = self._last_global_step_saved
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            # Keep ModelCheckpoint's own record: it skips a save at a step it has saved at, and the
            # held top-k save after validation may fall on this very step.
            self._last_global_step_saved = saved_at
            self._held_last_saved_at = trainer.global_step

    def _last_held_for_the_monitor(self, trainer) -> bool:
        """A step-interval save is due at this step and ModelCheckpoint is holding it for the monitor."""
        return (
            bool(self.save_last)
            and self._every_n_train_steps >= 1
            and trainer.global_step % self._every_n_train_steps == 0
            and self._defer_save_until_validation
            and self._held_last_saved_at != trainer.global_step  # once a step, not once a micro-batch
            and not self._should_skip_saving_checkpoint(trainer)  # sanity check, fast_dev_run, saved
        )


    # 3. Atomic saves ------------------------------------------------------------------------------
    def _save_checkpoint(self, trainer, filepath: str) -> None:
        """ModelCheckpoint's save (last and top-k alike), written under another name and renamed."""
        _write_then_rename(trainer, filepath, self.save_weights_only)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


def _write_then_rename(trainer, path: str, weights_only: bool) -> None:
    partial = f"{path}.partial"  # not *.ckpt: `--ckpt_path last` never picks a half-written file
    with removed_on_write_fault(Path(partial), "a checkpoint", Path(path), checkpoint_bytes(trainer, path),
                                lambda: _intact_and_rerun(Path(path).parent)):
        trainer.save_checkpoint(partial, weights_only)
    trainer.strategy.barrier()  # a folder of shards (DeepSpeed, sharded FSDP): every rank's part is in
    if trainer.is_global_zero:
        _replace(partial, path)
    trainer.strategy.barrier()


def checkpoint_bytes(trainer, path: str) -> int:
    """About a checkpoint's size: the largest one already in its folder, else the trainable weights
    (what a PEFT checkpoint holds; a full one holds every weight) and the optimizer's state."""
    earlier = [file.stat().st_size for file in Path(path).parent.glob("*.ckpt")]
    if earlier:
        return max(earlier)
    module = trainer.lightning_module
    trainable = (parameter for parameter in module.parameters() if parameter.requires_grad)
    weights = module.parameters() if getattr(module, "peft_config", None) is None else trainable
    optimizer_state = (value for optimizer in trainer.optimizers for state in optimizer.state.values()
                       for value in state.values() if isinstance(value, torch.Tensor))
    return tensor_bytes(weights) + tensor_bytes(optimizer_state)


def _intact_and_rerun(checkpoints_dir: Path) -> tuple[str, str]:
    intact, checkpoint = checkpoints_intact(checkpoints_dir)
    if checkpoint is None:
        return intact, "re-run the same sft fit"
    return intact, f"resume the same sft fit with --ckpt_path {checkpoint}"


def _replace(partial: str, path: str) -> None:
    """``os.replace``: atomic on one filesystem, and partial sits beside path. A checkpoint folder
    cannot replace a non-empty one: the old one is moved aside first and removed after (a kill between
    the two renames leaves it as ``<path>.old``)."""
    if os.path.isdir(partial) and os.path.exists(path):
        old = f"{path}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(partial, path)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.replace(partial, path)


def _say(trainer, line: str) -> None:
    if trainer.is_global_zero:
        print(line, file=sys.stderr, flush=True)
