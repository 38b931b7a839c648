"""Scores the answers ``sft test`` generates, per question type, against the labelled test file.

The module's ``test_step`` returns its answers; this callback collects them, scores them with the
same code as ``sft score`` (so a run and an external answers file are measured identically), logs
every number to TensorBoard as ``test/<type>/<metric>``, writes ``metrics.json`` and the answers
into the run directory, and prints the table.
"""

from pathlib import Path

from lightning.pytorch.callbacks import Callback

from evaluation.answer_files import ordered_answers, write_answers


class AnswerMetrics(Callback):
    def __init__(self, enabled: bool = True):
        """
        Args:
            enabled: Generate and score answers during ``sft test`` (off: test loss only).
        """
        self.enabled = enabled
        self.answers: list[dict] = []
        self.metrics: dict = {}

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Runs after the data module read the test file and before the model loads: a test file
        without answers stops here, not after every answer was generated."""
        if stage == "test" and self.enabled and trainer.datamodule is not None:
            from evaluation.scoring import check_scorable

            check_scorable(trainer.datamodule.records("test"))

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self.answers = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.enabled and outputs:
            self.answers.append(outputs)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if not self.enabled or not self.answers or trainer.datamodule is None:
            return
        from evaluation.scoring import format_metrics_table, numeric_items, score_records

        rows = ordered_answers(self.answers)
        self.metrics = score_records({row["id"]: row["content"] for row in rows}, trainer.datamodule.records("test"))
        for name, value in numeric_items(self.metrics):
            pl_module.log(f"test/{name}", value, batch_size=1)
        if trainer.global_rank == 0:
            self._write(Path(trainer.log_dir or "."), rows)
            print(format_metrics_table(self.metrics))

    def _write(self, run_dir: Path, rows: list[dict]) -> None:
        from evaluation.scoring import write_metrics

        answers_path = write_answers(rows, run_dir / "test_answers")
        metrics_path = run_dir / "metrics.json"
        write_metrics(self.metrics, metrics_path)
        print(f"test metrics written: {metrics_path} (answers: {answers_path})")
