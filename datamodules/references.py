"""What each format's record is scored against: one function per format, fields read through renames.

A record without its answer (a file to predict) gets an empty ``Reference``; ``sft test`` refuses
such records before any model work (``evaluation/scoring.py``'s ``check_scorable``).

>>> reference_of(FieldReader({"problem": "1+1", "solution": "\\\\boxed{2}", "answer": "2"}), "math")
Reference(answers=('\\\\boxed{2}',), final_answer='2', choices={}, gold_letter=None, code=None)
"""

import string
from collections.abc import Callable, Mapping

from core.errors import MissingFieldError
from core.record import CodeTest, Message, Reference
from datamodules.formats import FieldReader, qa_answers


def _texts(fields: FieldReader, name: str) -> tuple[str, ...]:
    return (fields.text(name),) if fields.has(name) else ()


def _final_answer(fields: FieldReader, name: str) -> str | None:
    """A final answer as written (a number in JSON is fine: ``44``); None where absent."""
    value = fields.get(name)
    if value is None or isinstance(value, bool) or str(value).strip() == "":
        return None
    if not isinstance(value, (str, int, float)):
        raise MissingFieldError(fields.key(name), "expected a string or a number")
    return str(value)


def choice_options(fields: FieldReader) -> dict[str, str]:
    """Option letter → text; letters must run A, B, C, … without gaps (the heads index them)."""
    choices = fields.get("choices")
    if not isinstance(choices, Mapping) or not choices:
        raise MissingFieldError(fields.key("choices"), 'expected an object like {"A": "...", "B": "..."}')
    options = {letter: text for letter, text in choices.items() if text is not None}
    letters = sorted(options)
    if not letters or letters != list(string.ascii_uppercase[: len(letters)]):
        raise MissingFieldError(fields.key("choices"), f"options must be lettered A, B, C, ... without gaps, got {letters}")
    return options


def _typed_reference(fields: FieldReader) -> Reference:
    question_type = fields.text("type")
    if question_type == "choice":
        options = choice_options(fields)
        gold = fields.get("answer")
        if gold is not None and gold not in options:
            raise MissingFieldError(fields.key("answer"), f"the gold letter must be one of {sorted(options)}, got '{gold}'")
        return Reference(answers=_texts(fields, "answer"), choices=options, gold_letter=gold)
    if question_type == "code-generate":
        code = None  # an unlabelled file may give the entry point alone: scoring then says what is missing
        if fields.has("test") and fields.has("entry_point"):
            code = CodeTest(fields.text("prompt"), fields.text("test"), fields.text("entry_point"))
        return Reference(answers=_texts(fields, "answer"), code=code)
    if question_type == "math":
        return Reference(answers=_texts(fields, "answer"), final_answer=_final_answer(fields, "final_answer"))
    return Reference(answers=_texts(fields, "answer"))


def _math_reference(fields: FieldReader) -> Reference:
    """Math500-style: the worked ``solution`` and, where given, the final ``answer``."""
    return Reference(answers=_texts(fields, "solution"), final_answer=_final_answer(fields, "answer"))


def last_assistant_reference(messages: list[Message]) -> Reference:
    """Conversational formats: the last assistant turn, if the conversation ends with one."""
    if messages and messages[-1]["role"] == "assistant":
        return Reference(answers=(messages[-1]["content"],))
    return Reference()


REFERENCES: dict[str, Callable[[FieldReader], Reference]] = {
    "typed": _typed_reference,
    "qa": lambda fields: Reference(answers=tuple(qa_answers(fields))),
    "math": _math_reference,
    "think": lambda fields: Reference(answers=_texts(fields, "answer")),
}


def reference_of(fields: FieldReader, record_format: str, messages: list[Message] | None = None) -> Reference:
    """The reference of one record; conversational formats take it from their ``messages``."""
    if record_format in REFERENCES:
        return REFERENCES[record_format](fields)
    return last_assistant_reference(messages or [])
