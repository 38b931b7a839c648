"""Which training data a checkpoint was trained on, so that a fit resumed on other data says so
rather than skip the new data's first records as if they had been trained.

The data module's state, which Lightning saves in every checkpoint (``SFTDataModule.state_dict``),
holds the training records' count and a sha256 over them as read (``token_cache.records_digest``:
ids, types, conversations, tools, in order; nothing keyed by file name), the global step the
checkpoint was saved at, and the step the records started at (0 unless a resume brought them in).
A resumed fit compares the checkpoint's fingerprint with its own data before anything is written:

- the same records resume where the epoch stopped, as before;
- other records stop the run with one line naming the checkpoint and the record counts, unless
  ``data.resume_on_new_data``: the checkpoint's weights, optimizer and step are kept and the new
  data trains from its first record, in the batch order a fresh fit on it draws (its first epoch
  starts at the resume: ``modules.training.resume.restart_the_epoch``); a later resume counts its position
  from the step it started at.

Checkpoints written before the fingerprint carry none and resume as before.
"""

import math

from datamodules.batching import resume_position
from datamodules.token_cache import records_digest

STATE_KEY = "training_data"


def fingerprint(records) -> dict:
    """The record count and the records' sha256, as the checkpoint keeps them."""
    return {"records": len(records), "sha256": records_digest(records, lambda record: record.messages)}


def saved_fingerprint(checkpoint: dict, datamodule) -> dict | None:
    """The checkpoint's fingerprint (Lightning keys a data module's state by its class name)."""
    return checkpoint.get(type(datamodule).__qualname__, {}).get(STATE_KEY)


def new_training_data(checkpoint_path, saved: dict | None, datamodule) -> bool:
    """Whether ``datamodule``'s training records are not those ``saved`` fingerprints (None: a checkpoint
    from before fingerprints, resumed as before); a ValueError naming both when they are not, unless
    the data module's ``resume_on_new_data`` allows it."""
    if saved is None or not datamodule.paths["train"]:
        return False
    current = datamodule.train_fingerprint()
    if current["sha256"] == saved["sha256"]:
        return False
    if not datamodule.resume_on_new_data:
        raise ValueError(other_data_message(checkpoint_path, saved, current, datamodule.split_path("train")))
    return True


def other_data_message(checkpoint_path, saved: dict, current: dict, train_path: str) -> str:
    """
    >>> print(other_data_message("last.ckpt", {"records": 8}, {"records": 6}, "b.jsonl"))
    last.ckpt was trained on other training data (8 records then, 6 in b.jsonl now): resuming would skip the new data's first records as if trained on them; add --data.resume_on_new_data true to train the new data from its first record with the checkpoint's weights, optimizer and step, or resume with the checkpoint's training data
    """
    counts = (f"{saved['records']} records then, {current['records']} in {train_path} now"
              if saved["records"] != current["records"] else
              f"{saved['records']} records then and in {train_path} now, with other contents")
    return (f"{checkpoint_path} was trained on other training data ({counts}): resuming would skip the new data's "
            "first records as if trained on them; add --data.resume_on_new_data true to train the new data from "
            "its first record with the checkpoint's weights, optimizer and step, or resume with the checkpoint's "
            "training data")


def position_in_data(started_at_step: int, epoch: int, global_step: int, batches_per_epoch: int,
                     accumulate: int) -> tuple[int, int]:
    """(epoch of the batch order, batches of it already trained) for a fit at ``epoch`` and
    ``global_step`` whose training data started at ``started_at_step``.

    >>> position_in_data(0, 1, 6, batches_per_epoch=4, accumulate=1)
    (1, 2)
    >>> position_in_data(2, 0, 2, batches_per_epoch=4, accumulate=1)  # new data at step 2: its first batch
    (0, 0)
    >>> position_in_data(2, 1, 7, batches_per_epoch=4, accumulate=1)  # 5 steps on it
    (1, 1)

    The loader Lightning builds to size the schedule, before the loop's step is restored, sees step
    0: new data starts at its first batch there too.
    """
    if started_at_step == 0:  # the data the fit began with: the loop's epoch is the order's
        return resume_position(epoch, global_step, batches_per_epoch, accumulate)
    steps = max(0, global_step - started_at_step)
    epochs_done = steps // math.ceil(batches_per_epoch / accumulate)
    return resume_position(epochs_done, steps, batches_per_epoch, accumulate)
