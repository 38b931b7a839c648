"""What a fit resumed from any checkpoint needs, beyond Lightning's own restore, to go on exactly as
the uninterrupted fit: the random state, and the epoch count after a restart on an epoch's last batch.

1. The random state of training is saved in every checkpoint, so a resumed fit draws the dropout
masks (and any other random draw of a training step) that an uninterrupted fit draws.

Lightning checkpoints weights, optimizer, schedulers, loops and callbacks' states, but not the
random generators (torch CPU and CUDA, python ``random``, numpy): a fit resumed from step N starts
from ``seed_everything``'s state, not from step N's. Here the state is taken at the end of each
optimizer step (the moment every checkpoint is taken, between two steps) and put back at the start
of the next training batch, in an uninterrupted run as in a resumed one. Whatever draws between the
two (a validation run, a new epoch's data-loader iterator, a checkpoint save) then moves neither
run's training draws, and the two runs take the same path from the checkpoint's step on.

Under data parallelism the checkpoint holds rank 0's state, which every rank restores.

2. A checkpoint saved after an epoch's last batch, before the epoch ended: Lightning counts that
epoch as done on resume but not the next one as started (``modules.training.resume.count_the_next_epoch``).
"""

import random

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from modules.training.resume import count_the_next_epoch


def random_state() -> dict:
    """Every generator's state, in types ``torch.load(weights_only=True)`` reads (tensors, ints, lists)."""
    bit_generator, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),  # (version 3, 625 ints, None): the ints are the state
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
    }
    assert bit_generator == "MT19937"
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ExactResume(Callback):
    """Saves the random state of the last optimizer step and restores it before the next training batch;
    counts the epoch a restart on an epoch's last batch begins."""

    def __init__(self):
        self._at_last_step: dict | None = None  # the state as the last optimizer step ended: what checkpoints hold
        self._step_of_state: int | None = None
        self._to_restore: dict | None = None  # put back at the next training batch's start

    def on_train_start(self, trainer, pl_module) -> None:
        self._step_of_state = trainer.global_step  # the restored step, on a resume
        count_the_next_epoch(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._to_restore is not None:
            set_random_state(self._to_restore)
            self._to_restore = None  # once a step: the micro-batches of a window draw on in sequence

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Runs before ModelCheckpoint's save of this step (Lightning calls checkpoint callbacks last).
        if trainer.global_step != self._step_of_state:  # this batch ended an optimizer step
            self._at_last_step = self._to_restore = random_state()
            self._step_of_state = trainer.global_step

    def state_dict(self) -> dict:
        return {"random_state": self._at_last_step if self._at_last_step is not None else random_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._at_last_step = self._to_restore = state_dict["random_state"]
