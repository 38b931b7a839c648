"""What a checkpoint records of how it was trained, so that a resume from it says where it differs
instead of failing in hundreds of lines or training on silently.

1. Every checkpoint holds the model settings that decide its weights (PEFT method, rank, target
modules, head, base model): the CLI compares them with the configured ones before a model loads
(modules/training/checkpoint_settings.py).
2. A fit resumed on other training data with ``data.resume_on_new_data`` trains the new data from its
first record: the epoch the checkpoint stopped in counts none of its batches as trained
(datamodules/training_data.py, ``modules.training.resume.restart_the_epoch``). The training data's fingerprint
itself travels in the data module's state.
"""

from lightning.pytorch.callbacks import Callback

from modules.training.checkpoint_settings import CHECKPOINT_KEY, model_settings
from modules.training.resume import restart_the_epoch


class ResumeChecks(Callback):
    """Writes the model settings into every checkpoint; restarts the epoch on new training data."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = model_settings(pl_module)

    def on_train_start(self, trainer, pl_module) -> None:
        if getattr(trainer.datamodule, "new_data_at_resume", False):
            restart_the_epoch(trainer)
