"""Writes ``sft predict`` answers: ``predictions.json`` in the seed project's format, plus jsonl.

Answers are put back in input order (every id once) and written to a temporary file that is then
renamed, so an interrupted run never leaves a half-written answers file.
"""

from pathlib import Path

from lightning.pytorch.callbacks import BasePredictionWriter

from evaluation.answer_files import ordered_answers, write_answers


class PredictionWriter(BasePredictionWriter):
    """Collects all answers at the end of ``predict`` and writes them into the run directory."""

    def __init__(self, output_dir: str | None = None):
        """
        Args:
            output_dir: Where to write the answers (default: the run's log directory).
        """
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir
        self.written_path: Path | None = None

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        if trainer.global_rank != 0:
            return
        output_dir = Path(self.output_dir or trainer.log_dir or ".")
        self.written_path = write_answers(ordered_answers(predictions), output_dir)
        print(f"answers written: {self.written_path} (and predictions.jsonl beside it)")
