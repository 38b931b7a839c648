"""Writes ``sft predict`` answers: ``predictions.json`` in the seed project's format, plus jsonl.

Answers are put back in input order (every id once) and written to a temporary file that is then
renamed, so an interrupted run never leaves a half-written answers file.
"""

import json
from pathlib import Path

from lightning.pytorch.callbacks import BasePredictionWriter

from core.files import write_text_atomically


def ordered_answers(batches: list[list[dict]]) -> list[dict]:
    """Flatten per-batch answers and restore input order; refuse duplicate ids."""
    rows = sorted((row for batch in batches for row in batch), key=lambda row: row["row_index"])
    seen: set[str] = set()
    for row in rows:
        if row["id"] in seen:
            raise ValueError(f"record id '{row['id']}' appears more than once in the predict file")
        seen.add(row["id"])
    return rows


def write_answers(rows: list[dict], output_dir: Path) -> Path:
    """Write both files; returns the path of ``predictions.json``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    seed_format = {"result": {"results": [{"id": row["id"], "content": row["content"]} for row in rows]}}
    json_path = output_dir / "predictions.json"
    write_text_atomically(json_path, json.dumps(seed_format, ensure_ascii=False, indent=2) + "\n")
    lines = [json.dumps({"id": r["id"], "type": r["type"], "content": r["content"]}, ensure_ascii=False) for r in rows]
    write_text_atomically(output_dir / "predictions.jsonl", "\n".join(lines) + "\n")
    return json_path


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
