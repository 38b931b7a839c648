"""Loading record files through HF ``datasets``, with errors that name the file, line and field.

``datasets`` reports a broken JSON line as a pyarrow parse error without a line number; when a
local JSON Lines file fails to load, it is scanned once more here to point at the exact line.
"""

import json
from pathlib import Path

import datasets

from core.errors import RecordError

LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}




def _first_bad_json_line(path: Path) -> RecordError | None:
    with path.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                return RecordError(str(path), f"line {line_number}", f"invalid JSON ({error.msg})")
            if not isinstance(record, dict):
                return RecordError(str(path), f"line {line_number}", "expected a JSON object")
    return None


def load_records(path_or_name: str, split: str = "train") -> datasets.Dataset:
    """A local jsonl/json/parquet/csv file, or a hub dataset name for those who have a hub."""
    path = Path(path_or_name)
    builder = LOCAL_BUILDERS.get(path.suffix.lower())
    if builder is None:
        return datasets.load_dataset(path_or_name, split=split)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as error:  # datasets wraps parser errors in several types
        located = _first_bad_json_line(path) if builder == "json" and path.suffix == ".jsonl" else None
        raise (located or RecordError(str(path), "loading", str(error))) from error


class RowLocator:
    """Maps a row index back to where a person finds it: a line number for text formats."""

    def __init__(self, path_or_name: str):
        self.source = path_or_name
        self.suffix = Path(path_or_name).suffix.lower()
        self._jsonl_lines: list[int] | None = None

    def _jsonl_line_numbers(self) -> list[int]:
        if self._jsonl_lines is None:
            with open(self.source, encoding="utf-8") as lines:
                self._jsonl_lines = [n for n, line in enumerate(lines, start=1) if line.strip()]
        return self._jsonl_lines

    def describe(self, row_index: int) -> str:
        if self.suffix == ".jsonl":
            return f"line {self._jsonl_line_numbers()[row_index]}"
        if self.suffix == ".csv":
            return f"line {row_index + 2}"  # after the header line
        return f"record {row_index + 1}"
