"""Loading record files through HF ``datasets``, with errors that name the file, line and field.

``datasets`` reports a broken line as a pyarrow parse error without a line number; the checks in
``file_checks.py`` run before loading (UTF-8, not empty) and after a failure (the first bad line).
"""

from contextlib import contextmanager
from pathlib import Path

import datasets

from core.errors import RecordError
from datamodules.file_checks import check_text_file, locate_load_error

LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
# File suffixes people give by mistake; a hub dataset name never ends in one.
NOT_DATASET_NAMES = (".txt", ".tsv", ".xlsx", ".xls", ".yaml", ".yml", ".md", ".gz", ".zip")


def load_records(path_or_name: str, split: str = "train") -> datasets.Dataset:
    """A local jsonl/json/parquet/csv file, or a hub dataset name for those who have a hub.

    A name with a file suffix is a file: ``my_data.txt`` is refused as a format, not sent to the hub.
    """
    path = Path(path_or_name)
    suffix = path.suffix.lower()
    builder = LOCAL_BUILDERS.get(suffix)
    if builder is None:
        if path.is_file() or suffix in NOT_DATASET_NAMES:
            raise RecordError(str(path), "whole file", f"'{suffix or 'suffix-less'}' files are not read: use "
                              f"{', '.join(LOCAL_BUILDERS)} (or a hub dataset name)")
        return datasets.load_dataset(path_or_name, split=split)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    check_text_file(path)
    try:
        with quiet_datasets():
            return datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as error:  # datasets wraps parser errors in several types
        raise (locate_load_error(path) or RecordError(str(path), "loading", str(error))) from error


@contextmanager
def quiet_datasets():
    """No progress bar for reading a local file, and no logged parser traceback: a failure becomes
    one located ``RecordError`` instead."""
    verbosity, bars_were_on = datasets.logging.get_verbosity(), datasets.is_progress_bar_enabled()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL + 10)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars_were_on:
            datasets.enable_progress_bars()


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
