"""Answers for a sample of the validation set at each validation: task metrics and sample text.

Validation loss says little about whether answers are right; the seed's SQuAD run kept the
checkpoint with the best F1. This callback generates answers for the first ``num_records``
validation records, scores them with the same scorer as ``sft test`` and logs ``val/<type>/<metric>``
and ``val/overall/score``, so ``ModelCheckpoint(monitor="val/overall/score", mode="max")`` keeps the
best checkpoint by a task metric. The Text tab's table of a few answers is ``answer_table.py``'s (on by
default, greedy and short); this one is off by default, as it answers with the run's own settings.
"""

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import move_data_to_device

from modules.generation.merged_adapters import adapters_merged


class ValidationAnswers(Callback):
    def __init__(self, num_records: int = 0):
        """
        Args:
            num_records: Validation records to answer and score at each validation (0: off).
        """
        self.num_records = num_records
        self.metrics: dict = {}

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Before the model loads: the validation records must carry what their metric compares with."""
        if stage == "fit" and self.num_records > 0 and trainer.datamodule is not None:
            from evaluation.scoring import check_scorable

            check_scorable(trainer.datamodule.records("val"))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self.num_records <= 0 or trainer.sanity_checking or trainer.datamodule is None:
            return
        from evaluation.scoring import numeric_items, score_records

        answers = self._answers(trainer, pl_module)
        wanted = {row["id"] for row in answers}
        references = [record for record in trainer.datamodule.records("val") if record.id in wanted]
        self.metrics = score_records({row["id"]: row["content"] for row in answers}, references)
        for name, value in numeric_items(self.metrics):
            pl_module.log(f"val/{name}", value, batch_size=1)

    def _answers(self, trainer, pl_module) -> list[dict]:
        """Generated as ``sft test`` generates them: adapters merged, in the run's precision (this hook
        runs outside Lightning's autocast, and a bf16-mixed LoRA fit keeps its frozen weights in bf16:
        modules/speed/frozen_weights.py); training goes on from exactly the weights it had
        (``restore_exactly``)."""
        answers = []
        with adapters_merged(pl_module.model, restore_exactly=True), trainer.precision_plugin.forward_context():
            for batch in trainer.datamodule.answer_dataloader("val", self.num_records):
                answers += pl_module.predict_step(move_data_to_device(batch, pl_module.device), 0)
        return answers
