"""Scores the answers ``sft test`` generates, per question type, against the labelled test file.

The module's ``test_step`` returns its answers; this callback collects them, scores them with the
same code as ``sft score`` (so a run and an external answers file are measured identically), logs
every number to TensorBoard as ``test/<type>/<metric>``, writes ``metrics.json`` and the answers
into the run directory, and prints the table. Each batch's answers are also appended to
``test_answers/answers.partial.jsonl`` as it finishes (``evaluation/answer_journal.py``): a killed
test keeps them, and a rerun into the same folder (``--answer_metrics.output_dir``) answers only the
rest; the journal is removed once ``metrics.json`` is written.

Under data parallelism each rank answers its share of the batches into its own journal; once every
rank is done, rank 0 scores all the answers and sends the scores to the others, so every rank logs
the same numbers, and rank 0 writes the files.
"""

from pathlib import Path

from lightning.pytorch.callbacks import Callback

from evaluation.answer_files import ordered_answers, write_answers
from evaluation.answer_journal import AnswerJournal, answer_settings, answers_in, journal_name, remove_journals

FOLDER_OPTION = "--answer_metrics.output_dir"


class AnswerMetrics(Callback):
    def __init__(self, enabled: bool = True, output_dir: str | None = None):
        """
        Args:
            enabled: Generate and score answers during ``sft test`` (off: test loss only).
            output_dir: Where ``metrics.json`` and ``test_answers/`` go (default: the run's log directory,
                new each run). A rerun with the same folder after an interruption answers only the records
                not yet answered (``test/loss`` then covers only those; the scores cover every record).
        """
        self.enabled = enabled
        self.output_dir = output_dir
        self.journal: AnswerJournal | None = None
        self.earlier_answers: list[dict] = []  # found in the journals of an interrupted run
        self.metrics: dict = {}

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Runs after the data module read the test file and before the model loads: a test file
        without answers stops here, not after every answer was generated. Records an interrupted run
        into the same folder answered are not asked again."""
        if stage != "test" or not self.enabled or trainer.datamodule is None:
            return
        from evaluation.scoring import check_scorable

        check_scorable(trainer.datamodule.records("test"))
        # trainer.log_dir is a collective under DDP: asked here, where every rank is, and never again
        self.run_dir = Path(self.output_dir or trainer.log_dir or ".")
        self.answers_dir = self.run_dir / "test_answers"
        self.journal = AnswerJournal(self.answers_dir / journal_name(trainer.global_rank, trainer.world_size))
        self.earlier_answers, self.metrics = answers_in(self.answers_dir), {}
        if self.earlier_answers:
            trainer.datamodule.skip_answered("test", {row["id"] for row in self.earlier_answers})
            if trainer.global_rank == 0:
                print(f"resuming: {len(self.earlier_answers)} answers found in {self.answers_dir}, answering the rest")

    def on_test_start(self, trainer, pl_module) -> None:
        """The checkpoint is restored by now: the journals' answers must come from these settings."""
        if self.journal is not None:
            self.journal.start(answer_settings(trainer, pl_module, "test"), FOLDER_OPTION)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.journal is not None and outputs:
            self.journal.append(outputs)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        """Every rank gets here (each answers as many batches): the collectives below match."""
        if self.journal is None:
            return
        from evaluation.scoring import numeric_items

        trainer.strategy.barrier()  # every rank's answers are in its journal
        rows = ordered_answers([answers_in(self.answers_dir)]) if trainer.global_rank == 0 else []
        if trainer.global_rank == 0:
            self._score(trainer, rows)
        self.metrics = trainer.strategy.broadcast(self.metrics, src=0)
        for name, value in numeric_items(self.metrics):
            pl_module.log(f"test/{name}", value, batch_size=1)
        if trainer.global_rank == 0:
            self._write(rows)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        """Every record was answered before this run (so the loop never started): score and write now
        (no TensorBoard numbers: there is no test epoch to log them in)."""
        if stage != "test" or self.journal is None or self.metrics or trainer.global_rank != 0:
            return
        expected = set(trainer.datamodule.answering_examples("test")["id"])
        if expected and expected <= {row["id"] for row in self.earlier_answers}:
            self.journal.start(answer_settings(trainer, pl_module, "test"), FOLDER_OPTION)
            rows = ordered_answers([self.earlier_answers])
            self._score(trainer, rows)
            self._write(rows)

    def _score(self, trainer, rows: list[dict]) -> None:
        from evaluation.scoring import score_records

        self.metrics = score_records({row["id"]: row["content"] for row in rows}, trainer.datamodule.records("test"))

    def _write(self, rows: list[dict]) -> None:
        from evaluation.scoring import format_metrics_table, write_metrics

        answers_path = write_answers(rows, self.answers_dir)
        metrics_path = self.run_dir / "metrics.json"
        write_metrics(self.metrics, metrics_path)
        remove_journals(self.answers_dir)
        print(format_metrics_table(self.metrics))
        print(f"test metrics written: {metrics_path} (answers: {answers_path})")
