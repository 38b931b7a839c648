"""Writes ``sft predict`` answers: ``predictions.json`` in the seed project's format, plus jsonl.

Each batch's answers are appended to ``answers.partial.jsonl`` in the output folder as the batch
finishes (``evaluation/answer_journal.py``), so a killed run keeps them; a rerun into the same folder
(``--predictions.output_dir``) leaves the answered records out and generates only the rest. At the
end, every answer (this run's and the journal's) is put back in input order, written to temporary
files that are then renamed, and the journal is removed.

Under data parallelism each rank answers its share of the batches into its own journal; once every
rank is done, rank 0 writes the files from all of them.
"""

from pathlib import Path

from lightning.pytorch.callbacks import BasePredictionWriter

from evaluation.answer_files import ordered_answers, write_answers
from evaluation.answer_journal import AnswerJournal, answer_settings, answers_in, journal_name, remove_journals

FOLDER_OPTION = "--predictions.output_dir"


class PredictionWriter(BasePredictionWriter):
    """Appends each batch's answers to a journal and writes the answer files at the end of ``predict``."""

    def __init__(self, output_dir: str | None = None):
        """
        Args:
            output_dir: Where to write the answers (default: the run's log directory, new each run). A rerun
                with the same folder after an interruption answers only the records not yet answered.
        """
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.written_path: Path | None = None
        self.journal: AnswerJournal | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        """After the data module read the predict file: answers a previous run left are not asked again."""
        super().setup(trainer, pl_module, stage)
        if stage != "predict":
            return
        # trainer.log_dir is a collective under DDP: asked here, where every rank is, and never again
        self.folder = Path(self.output_dir or trainer.log_dir or ".")
        self.journal = AnswerJournal(self.folder / journal_name(trainer.global_rank, trainer.world_size))
        self.written_path = None
        answered = {row["id"] for row in answers_in(self.folder)}
        if answered and trainer.datamodule is not None:
            trainer.datamodule.skip_answered("predict", answered)
            if trainer.global_rank == 0:
                print(f"resuming: {len(answered)} answers found in {self.folder}, answering the rest")

    def on_predict_start(self, trainer, pl_module) -> None:
        """The checkpoint is restored by now: the journals' answers must come from these settings."""
        self.journal.start(answer_settings(trainer, pl_module, "predict"), FOLDER_OPTION)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        self.journal.append(prediction)

    def on_predict_end(self, trainer, pl_module) -> None:
        trainer.strategy.barrier()  # every rank's answers are in its journal
        if trainer.global_rank == 0:
            self._write()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        """Every record was answered before this run (so the loop never started): write the files now."""
        if stage == "predict" and trainer.global_rank == 0 and self.written_path is None and self._all_answered(trainer):
            self.journal.start(answer_settings(trainer, pl_module, "predict"), FOLDER_OPTION)
            self._write()

    def _all_answered(self, trainer) -> bool:
        if self.journal is None or trainer.datamodule is None:
            return False
        answered = {row["id"] for row in answers_in(self.folder)}
        return set(trainer.datamodule.answering_examples("predict")["id"]) <= answered

    def _write(self) -> None:
        self.written_path = write_answers(ordered_answers([answers_in(self.folder)]), self.folder)
        remove_journals(self.folder)
        print(f"answers written: {self.written_path} (and predictions.jsonl beside it)")
