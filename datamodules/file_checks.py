"""What is wrong with a data file, said with its line: checks before and after ``datasets`` reads it.

``datasets`` (pyarrow underneath) reports a broken file as a parser error without a line number,
or not at all (a file of blank lines loads as zero rows; a JSON Lines line holding a list loads
as a row of nothing). Before loading, a text file is checked to be UTF-8 and to hold something,
and JSON to hold one object per record (a parse of the text, cheap next to tokenisation); when
loading still fails (a CSV row with too many fields), the file is scanned once more here to point
at the first bad line.
"""

import csv
import json
from pathlib import Path

from core.errors import RecordError

TEXT_SUFFIXES = (".jsonl", ".json", ".csv")


def check_text_file(path: Path) -> None:
    """UTF-8 and not empty: the two problems pyarrow reports worst."""
    if path.suffix.lower() not in TEXT_SUFFIXES:
        return
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise RecordError(str(path), f"line {line}", f"byte 0x{data[error.start]:02x} at column {column} is not "
                          "UTF-8 text: save the file as UTF-8") from None
    if not text.strip():
        raise RecordError(str(path), "whole file", "the file is empty (or holds only blank lines): no records")
    problem = locate_load_error(path) if path.suffix.lower() in (".jsonl", ".json") else None
    if problem:
        raise problem


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
                return RecordError(str(path), f"line {line_number}", "expected a JSON object (one record a line)")
    return None


def _first_bad_json_document(path: Path) -> RecordError | None:
    """A ``.json`` file is one list of records (or JSON Lines saved as .json)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":  # several documents: JSON Lines in a .json file
            return _first_bad_json_line(path)
        return RecordError(str(path), f"line {error.lineno}", f"invalid JSON ({error.msg})")
    if isinstance(document, dict):
        return None  # a single record, or datasets' {"data": [...]} layout: let datasets say
    if not isinstance(document, list):
        return RecordError(str(path), "whole file", "expected a list of records (JSON objects)")
    for index, record in enumerate(document):
        if not isinstance(record, dict):
            return RecordError(str(path), f"record {index + 1}",
                               f"expected a JSON object, got {type(record).__name__}")
    return None


def _first_bad_csv_row(path: Path) -> RecordError | None:
    with path.open(encoding="utf-8", newline="") as lines:
        rows = csv.reader(lines)
        header = next(rows, [])
        for row in rows:
            if row and len(row) != len(header):
                return RecordError(str(path), f"line {rows.line_num}",
                                   f"{len(row)} fields where the header has {len(header)} ({', '.join(header)})")
    return None


def locate_load_error(path: Path) -> RecordError | None:
    """The first bad line or record of a file that ``datasets`` failed to load, if one is found."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _first_bad_json_line(path)
    if suffix == ".json":
        return _first_bad_json_document(path)
    if suffix == ".csv":
        return _first_bad_csv_row(path)
    return None
