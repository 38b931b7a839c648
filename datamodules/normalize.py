"""Raw rows of any format → ``Record``s: made once, validated, and the only thing later code reads.

A file's rows go in (as HF ``datasets`` loaded them); ``Record``s come out with their id (the
file's own, else the row's position), question type, conversation, prompt, reference and location.
Every problem is a ``RecordError`` naming the file, the line (or record) and the field, raised
while the data is read, before any model work: a missing field, a bad option letter, an id that
appears twice.

>>> spec = ConversationSpec("qa")
>>> [record.id for record in normalize_records([{"question": "2+2?", "answer": "4"}], spec, "qa.json")]
['0']
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from core.errors import MissingFieldError, RecordError
from core.record import DEFAULT_METRIC, Record
from datamodules.formats import FORMAT_QUESTION_TYPES, FieldReader, split_prompt, to_messages, tools_of
from datamodules.record_loading import RowLocator, load_records
from datamodules.references import reference_of

ID_FIELDS = ("id", "unique_id")  # Math500 calls its id unique_id


@dataclass(frozen=True)
class ConversationSpec:
    """How the rows of one dataset become records: format, field renames, system prompt, metric."""

    record_format: str = "typed"
    renames: Mapping[str, str] = field(default_factory=dict)
    system_prompt: str | None = None
    train_on: str = "all_assistant"
    metric: str | None = None
    """Overrides the metric each record's type implies (``core.record.DEFAULT_METRIC``)."""
    roles: Mapping[str, str] = field(default_factory=dict)
    """ShareGPT speaker name → role, over the usual names (``formats.SHAREGPT_ROLES``)."""


def _record_id(fields: FieldReader, row_index: int) -> str:
    for name in ID_FIELDS:
        value = fields.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
            raise MissingFieldError(fields.key(name), "an id must be a non-empty string or an integer")
        return str(value)
    return str(row_index)


def _question_type(fields: FieldReader, record_format: str) -> str:
    return fields.text("type") if record_format == "typed" else FORMAT_QUESTION_TYPES[record_format]


def normalize_row(row: Mapping[str, Any], row_index: int, spec: ConversationSpec, locator: RowLocator) -> Record:
    location = locator.describe(row_index)
    fields = FieldReader(row, spec.renames)
    try:
        messages = to_messages(row, spec.record_format, spec.renames, spec.system_prompt, spec.roles)
        tools = tools_of(fields, spec.record_format)
        question_type = _question_type(fields, spec.record_format)
        reference = reference_of(fields, spec.record_format, messages)
        record_id = _record_id(fields, row_index)
    except MissingFieldError as error:
        raise RecordError(locator.source, location, str(error)) from None
    return Record(id=record_id, type=question_type, metric=spec.metric or DEFAULT_METRIC[question_type],
                  messages=messages, prompt_messages=split_prompt(messages), reference=reference,
                  source=locator.source, location=location, tools=tools)


def normalize_records(rows: Iterable[Mapping[str, Any]], spec: ConversationSpec, source: str) -> list[Record]:
    """Every row as a ``Record``; an id seen twice is an error naming both places."""
    locator = RowLocator(source)
    records: list[Record] = []
    first_seen: dict[str, str] = {}
    for row_index, row in enumerate(rows):
        record = normalize_row(row, row_index, spec, locator)
        if record.id in first_seen:
            raise _repeated_id(source, record, first_seen)
        first_seen[record.id] = record.location
        records.append(record)
    if not records:
        raise RecordError(source, "whole file", "no records in this file")
    return records


def record_errors(rows: Iterable[Mapping[str, Any]], spec: ConversationSpec, source: str,
                  limit: int = 20) -> list[RecordError]:
    """Every problem ``normalize_records`` would stop at, in file order, at most ``limit``: what
    ``sft inspect`` lists, so a file is fixed in one pass rather than one error per run.

    A record without its answer is a prompt to answer (a test file), not an error; one without
    its question is. Records of a JSON list are counted from 1, as a person counts them:

    >>> [error.location for error in record_errors([{"question": "?"}, {"answer": "4"}], ConversationSpec("qa"), "qa.json")]
    ['record 2']
    """
    locator = RowLocator(source)
    errors: list[RecordError] = []
    first_seen: dict[str, str] = {}
    rows_seen = 0
    for row_index, row in enumerate(rows):
        rows_seen += 1
        try:
            record = normalize_row(row, row_index, spec, locator)
        except RecordError as error:
            errors.append(error)
        else:
            if record.id in first_seen:
                errors.append(_repeated_id(source, record, first_seen))
            first_seen.setdefault(record.id, record.location)
        if len(errors) >= limit:
            break
    if not rows_seen:
        errors.append(RecordError(source, "whole file", "no records in this file"))
    return errors


def _repeated_id(source: str, record: Record, first_seen: dict[str, str]) -> RecordError:
    return RecordError(source, record.location,
                       f"id '{record.id}' appears again (first at {first_seen[record.id]}); ids must be unique")


def read_records(path_or_name: str, spec: ConversationSpec) -> list[Record]:
    """Load a file (or hub dataset) and normalise its rows."""
    return normalize_records(load_records(path_or_name), spec, path_or_name)
