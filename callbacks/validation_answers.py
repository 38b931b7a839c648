"""Answers for a sample of the validation set at each validation: task metrics and sample text.

Validation loss says little about whether answers are right; the seed's SQuAD run kept the
checkpoint with the best F1. This callback generates answers for the first ``num_records``
validation records, scores them with the same scorer as ``sft test`` and logs ``val/<type>/<metric>``
and ``val/overall/score``, so ``ModelCheckpoint(monitor="val/overall/score", mode="max")`` keeps the
best checkpoint by a task metric. A few prompts with their answers go to TensorBoard as text.
"""

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import move_data_to_device

from modules.generation.merged_adapters import adapters_merged



class ValidationAnswers(Callback):
    def __init__(self, num_records: int = 0, text_samples: int = 4):
        """
        Args:
            num_records: Validation records to answer and score at each validation (0: off).
            text_samples: How many of them to show in TensorBoard's text tab.
        """
        self.num_records = num_records
        self.text_samples = text_samples
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
        self._log_text(trainer, answers, references)

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

    def _log_text(self, trainer, answers: list[dict], references: list) -> None:
        experiment = getattr(trainer.logger, "experiment", None)
        if not hasattr(experiment, "add_text"):
            return
        by_id = {record.id: record for record in references}
        for row in answers[: self.text_samples]:
            record = by_id[row["id"]]
            reference = "\n---\n".join(record.reference.answers) or (record.reference.gold_letter or "")
            text = "\n".join(f"**{label}**\n```\n{value}\n```" for label, value in
                             [("prompt", record.prompt_messages[-1]["content"]), ("answer", row["content"]),
                              ("reference", reference)])
            experiment.add_text(f"val_answers/{row['id']}", text, global_step=trainer.global_step)
