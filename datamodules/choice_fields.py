"""Per-record fields the heads need: the question type, the choice options and the gold letter.

A choice record's options must be lettered A, B, C, … without gaps; its gold letter becomes a
class index (A = 0). Records of other types (and of formats without types) get no options.

>>> choice_fields({"type": "choice", "choices": {"A": "3", "B": "4"}, "answer": "B"})
{'record_type': 'choice', 'num_choices': 2, 'choice_label': 1}
"""

import string
from collections.abc import Mapping
from typing import Any

from core.constants import IGNORE_INDEX
from core.errors import MissingFieldError

NO_LABEL = -1


def option_letters(count: int) -> list[str]:
    return list(string.ascii_uppercase[:count])


def choice_fields(record: Mapping[str, Any], renames: Mapping[str, str] | None = None) -> dict:
    """``record_type``, ``num_choices`` (0 unless a choice record) and ``choice_label`` (-1 if none)."""
    renames = renames or {}
    record_type = str(record.get(renames.get("type", "type")) or "")
    if record_type != "choice":
        return {"record_type": record_type, "num_choices": 0, "choice_label": NO_LABEL}
    choices_key, answer_key = renames.get("choices", "choices"), renames.get("answer", "answer")
    letters = sorted(letter for letter, text in (record.get(choices_key) or {}).items() if text is not None)
    if not letters or letters != option_letters(len(letters)):
        raise MissingFieldError(choices_key, f"options must be lettered A, B, C, ... without gaps, got {letters}")
    answer = record.get(answer_key)
    if answer is None:
        return {"record_type": record_type, "num_choices": len(letters), "choice_label": NO_LABEL}
    if answer not in letters:
        raise MissingFieldError(answer_key, f"the gold letter must be one of {letters}, got '{answer}'")
    return {"record_type": record_type, "num_choices": len(letters), "choice_label": letters.index(answer)}


def answer_position(labels: list[int], ignore_index: int = IGNORE_INDEX) -> int:
    """Index of the last prompt token before the last trained span: where the answer is predicted."""
    position = len(labels) - 1
    while position > 0 and labels[position] == ignore_index:
        position -= 1  # skip untrained tail (none for single-turn records)
    while position > 0 and labels[position - 1] != ignore_index:
        position -= 1  # walk back to the start of the trained span
    return max(position - 1, 0)
