"""Resuming a fit that its budget stopped: where the checkpoint stands, and what is left to train.

Lightning counts an epoch as processed whenever its loop returns, also when ``max_steps``,
``max_time`` or another stop (``trainer.should_stop``) cut it short: ``FitLoop.on_advance_end``
(lightning/pytorch/loops/fit_loop.py) calls ``epoch_progress.increment_processed()`` and then the
``on_train_epoch_end`` hooks, where ``ModelCheckpoint`` saves. Such a checkpoint says "epoch 0
done" after 2 of its 4 batches, so a resume with a larger ``max_steps`` stops at once
(``FitLoop.done``: processed epochs >= ``max_epochs``) and, with more epochs allowed, starts the
next epoch and never trains the rest of the cut one. ``mark_cut_epoch_unfinished`` writes such a
checkpoint as the mid-epoch one it is; the data module then skips the batches already trained
(``datamodules.batching.resume_position``).

Two more things a resume with a larger budget needs: the train loader built after the restore
(``rebuild_train_loader_after_restore``), and the learning rate of the new, longer schedule
(``follow_current_schedule``). ``nothing_left_to_train`` reads a checkpoint before a resumed fit
starts: Lightning would otherwise "resume" into a run that stops at once, exits 0 and still writes
its config, a merged export and a summary. ``restart_the_epoch`` starts new training data at its
first batch (datamodules/training_data.py).
"""

from dataclasses import dataclass
from datetime import timedelta

import torch
from lightning.pytorch.callbacks import Timer
from torch.optim.lr_scheduler import LambdaLR


def mark_cut_epoch_unfinished(trainer, checkpoint: dict) -> None:
    """In a checkpoint saved before the epoch's batches ran out, count the epoch as not processed
    and its batches only up to the last optimizer step.

    The loop state then is that of a checkpoint taken right after that step (Lightning's
    ``RESTARTED_MID_EPOCH``), which Lightning resumes inside the epoch. A stop by time or by
    ``trainer.should_stop`` can fall inside an accumulation window: those micro-batches' gradients
    were never applied, the data module replays them, and Lightning's batch count must agree, or
    the resumed windows are cut in the wrong places and the epoch's last batches are never trained.
    """
    batches = trainer.fit_loop.epoch_loop.batch_progress
    if batches.is_last_batch or batches.current.ready >= trainer.num_training_batches:
        return  # the epoch ran out of batches: it is done
    loop_state = checkpoint.get("loops", {}).get("fit_loop")
    if loop_state is None:
        return
    epochs = loop_state["epoch_progress"]
    for counts in (epochs["total"], epochs["current"]):
        if counts["started"] > 0 and counts["processed"] == counts["started"]:
            counts["processed"] = counts["started"] - 1
            counts["completed"] = min(counts["completed"], counts["processed"])
    checkpoint["epoch"] = epochs["current"]["completed"]
    unstepped = batches.current.ready % trainer.accumulate_grad_batches
    batch_counts = loop_state["epoch_loop.batch_progress"]
    for counts in (batch_counts["total"], batch_counts["current"]):
        for stage in ("ready", "started", "processed", "completed"):
            counts[stage] -= unstepped


def count_the_next_epoch(trainer) -> None:
    """After a restart from a checkpoint saved on an epoch's last batch, start the next epoch as a
    fresh one (call from ``on_train_start``).

    Such a checkpoint (``every_n_train_steps``, saved in ``on_train_batch_end`` before the epoch's
    end) restarts "mid-epoch"; ``FitLoop.reset`` then counts the epoch as processed and completed,
    but ``FitLoop.on_advance_start`` still skips the next epoch's ``increment_ready`` /
    ``increment_started`` (and its ``on_train_epoch_start`` hooks) because the restart stage says
    mid-epoch. The next epoch then runs with processed == started, which a later checkpoint reads
    as a cut epoch (``mark_cut_epoch_unfinished``): resumed from it, the run trained the second
    epoch's first batches again. Clearing the stage lets Lightning start the epoch as any other.
    """
    fit_loop = trainer.fit_loop
    if (fit_loop.restarted_mid_epoch and fit_loop.epoch_loop.restarted_on_train_batch_end
            and fit_loop.epoch_loop.batch_progress.is_last_batch):  # the case FitLoop.reset turned into "epoch done"
        fit_loop.reset_restart_stage()


def restart_the_epoch(trainer) -> None:
    """Count none of the restored epoch's batches as trained (call from ``on_train_start``): a fit
    resumed mid-epoch on new training data (``data.resume_on_new_data``) trains the new data's whole
    first epoch from its first batch, rather than only the batches past the old data's position.

    Only the epoch's batch counts move back, by the batches the old data trained in it; the totals
    (which decide the restart stage), the step and the epoch count stay. A checkpoint saved on the
    epoch's last batch needs nothing: the next epoch starts afresh anyway.
    """
    batches = trainer.fit_loop.epoch_loop.batch_progress
    if batches.is_last_batch:
        return
    trained = batches.current.processed
    for stage in ("ready", "started", "processed", "completed"):
        setattr(batches.current, stage, getattr(batches.current, stage) - trained)


def rebuild_train_loader_after_restore(trainer) -> None:
    """Have the fit loop build the train loader again when it was built before the checkpoint was restored.

    ``configure_optimizers`` asks ``trainer.estimated_stepping_batches`` for the schedule's length;
    with ``max_epochs`` set that builds the train loader (and prefetches its first batch) before the
    restore, so the data module's skip of the trained batches is computed at step 0 and the
    checkpoint's loader state (the batch order's seed) is never loaded: the resumed epoch starts
    again from its first batch (Lightning-AI/pytorch-lightning#20550). Dropping the loader here, after the
    restore and before the first epoch starts, makes ``FitLoop.setup_data`` build it the way a
    resume without that early build does. Lightning keeps the states it has not loaded yet in
    ``_combined_loader_states_to_load``; once loaded, that list is empty and nothing is rebuilt.
    """
    fit_loop = trainer.fit_loop
    if not (fit_loop.restarting and fit_loop._combined_loader_states_to_load):
        return
    if fit_loop._data_fetcher is not None:
        fit_loop._data_fetcher.teardown()  # releases the early loader's workers
    fit_loop._combined_loader = None


def follow_current_schedule(trainer) -> None:
    """Give the optimizer the learning rate its schedule sets for the step about to be taken.

    Restoring a checkpoint loads the learning rate the *saved* run's schedule computed for the next
    step; a resume with a larger ``max_steps`` builds a longer schedule, and without this its
    first step would take the old one's (0 at the end of a cosine decay). When the schedule did
    not change this sets the value the optimizer already holds.
    """
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        if not isinstance(scheduler, LambdaLR):
            continue
        step = scheduler.last_epoch  # LambdaLR counts steps in last_epoch
        rates = [base * rate_at(step) for rate_at, base in zip(scheduler.lr_lambdas, scheduler.base_lrs)]
        for group, rate in zip(scheduler.optimizer.param_groups, rates):
            group["lr"] = rate
        scheduler._last_lr = rates  # what get_last_lr() and train/learning_rate report


@dataclass
class StoppedAt:
    """How far a checkpoint's fit went, in each unit a budget can be given in."""

    global_step: int
    finished_epochs: int  # epochs whose batches all ran (what FitLoop.done compares with max_epochs)
    train_seconds: float | None  # the Timer's training time, if the run had one


def stopped_at(checkpoint_path: str, timer_state_key: str | None = None) -> StoppedAt:
    # mmap: only the few entries read here leave the disk, however large the saved weights.
    # weights_only: a checkpoint of this project holds tensors, numbers, strings and containers only.
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    epochs = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    timer_state = checkpoint.get("callbacks", {}).get(timer_state_key, {}) if timer_state_key else {}
    train_seconds = timer_state.get("time_elapsed", {}).get("train")
    return StoppedAt(checkpoint["global_step"], epochs.get("processed", 0), train_seconds)


def nothing_left_to_train(checkpoint_path: str, trainer) -> str | None:
    """A one-line reason when resuming ``checkpoint_path`` under ``trainer``'s budget would train
    no step (Lightning stops at the first budget reached), else None."""
    timer = next((callback for callback in trainer.callbacks if isinstance(callback, Timer)), None)
    position = stopped_at(checkpoint_path, timer.state_key if timer else None)
    used_up = {}  # option → what the checkpoint has used of it
    if trainer.max_steps != -1 and position.global_step >= trainer.max_steps:
        used_up["--trainer.max_steps"] = f"is {trainer.max_steps}"
    max_epochs = epoch_budget(trainer, timer)
    if max_epochs != -1 and position.finished_epochs >= max_epochs:
        used_up["--trainer.max_epochs"] = f"is {max_epochs}"
    # Before the fit the Timer has run for no time: what remains is its whole duration.
    duration = timer.time_remaining() if timer else None
    if duration is not None and position.train_seconds is not None and position.train_seconds >= duration:
        trained = timedelta(seconds=round(position.train_seconds))
        used_up["--trainer.max_time"] = f"is {timedelta(seconds=duration)} and {trained} were trained"
    if not used_up:
        return None
    budgets = "; ".join(f"{option} {detail}" for option, detail in used_up.items())
    return (f"nothing left to train: checkpoint {checkpoint_path} is at global step {position.global_step} "
            f"with {position.finished_epochs} finished epoch(s), and {budgets}; "
            f"raise {' and '.join(used_up)} to train further")


def epoch_budget(trainer, timer) -> int:
    """``max_epochs`` as the fit loop will use it: unset means 1000, or no limit when steps or time
    bound the run (lightning/pytorch/loops/utilities.py ``_parse_loop_limits``)."""
    if trainer.max_epochs is not None:
        return trainer.max_epochs
    return 1000 if trainer.max_steps == -1 and timer is None else -1
