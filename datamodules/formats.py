"""Record formats: one pure function per format turns a record into chat messages.

Every format ends up as the same thing, a list of ``{"role", "content"}`` messages, so that one
piece of code (``chat_tokens.py``) renders and masks all of them. A record without its answer
(a user's test set) yields the messages up to the last user turn; the prompt for generation is
rendered from exactly those messages, the same way training renders them.

Field names can be remapped per dataset (``fields={"question": "Question"}``) so data whose keys
differ needs YAML, not code.

>>> to_messages({"question": "2+2?", "answer": "4"}, "qa")
[{'role': 'user', 'content': '2+2?'}, {'role': 'assistant', 'content': '4'}]
"""

from collections.abc import Callable, Mapping
from typing import Any, Literal, get_args

from core.errors import MissingFieldError
from core.record import Message

Format = Literal["typed", "messages", "prompt_completion", "instruction", "qa", "math", "think"]
FORMATS: tuple[str, ...] = get_args(Format)
ROLES = ("system", "user", "assistant", "tool")  # what chat templates know; a typo would be rendered as a role
TYPED_QUESTION_TYPES = ("choice", "code-generate", "generic-generate", "math")

# The question type of every record of a format without a ``type`` field.
FORMAT_QUESTION_TYPES = {
    "messages": "generic-generate",
    "prompt_completion": "generic-generate",
    "instruction": "generic-generate",
    "qa": "qa",
    "math": "math",
    "think": "think",
}

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

# How a typed record's prompt is shown to the model, per question type.
TYPED_PROMPT_TEMPLATES = {
    "choice": "{prompt}\n\n{options}\n\nAnswer with the letter of the correct option.",
    "code-generate": "Complete the following Python function and return the whole function "
    "in a ```python code block.\n\n```python\n{prompt}\n```",
    "generic-generate": "{prompt}",
    "math": "{prompt}\n\n" + MATH_INSTRUCTION.replace("{", "{{").replace("}", "}}"),
}

Record = Mapping[str, Any]




class FieldReader:
    """Reads canonical field names through the user's renames, with clear errors."""

    def __init__(self, record: Record, renames: Mapping[str, str] | None = None):
        self.record = record
        self.renames = dict(renames or {})

    def key(self, name: str) -> str:
        return self.renames.get(name, name)

    def has(self, name: str) -> bool:
        value = self.record.get(self.key(name))
        return value is not None and value != ""

    def get(self, name: str, default: Any = None) -> Any:
        value = self.record.get(self.key(name))
        return default if value is None else value

    def text(self, name: str) -> str:
        value = self.record.get(self.key(name))
        if not isinstance(value, str) or value == "":
            raise MissingFieldError(self.key(name), "expected a non-empty string")
        return value


def _user_assistant(prompt: str, answer: str | None) -> list[Message]:
    messages = [{"role": "user", "content": prompt}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def _answer_or_none(fields: FieldReader, name: str) -> str | None:
    return fields.text(name) if fields.has(name) else None


def render_choice_options(choices: Mapping[str, str]) -> str:
    """``{"A": "cat", "B": "dog"}`` → ``"A. cat\\nB. dog"`` (letters in order)."""
    return "\n".join(f"{letter}. {choices[letter]}" for letter in sorted(choices))


def typed_prompt(fields: FieldReader) -> str:
    question_type = fields.text("type")
    if question_type not in TYPED_PROMPT_TEMPLATES:
        raise MissingFieldError(fields.key("type"), f"'{question_type}' is not one of {TYPED_QUESTION_TYPES}")
    options = ""
    if question_type == "choice":
        choices = fields.get("choices")
        if not isinstance(choices, Mapping) or not choices:
            raise MissingFieldError(fields.key("choices"), 'expected an object like {"A": "...", "B": "..."}')
        options = render_choice_options({k: v for k, v in choices.items() if v is not None})
    prompt = fields.text("prompt").strip("\n")  # HumanEval prompts start with blank lines
    return TYPED_PROMPT_TEMPLATES[question_type].format(prompt=prompt, options=options)


def from_typed(fields: FieldReader) -> list[Message]:
    return _user_assistant(typed_prompt(fields), _answer_or_none(fields, "answer"))


def from_messages(fields: FieldReader) -> list[Message]:
    messages = fields.get("messages")
    if not isinstance(messages, list) or not messages:
        raise MissingFieldError(fields.key("messages"), "expected a non-empty list of {role, content}")
    for position, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise MissingFieldError(fields.key("messages"), f"message {position} needs 'role' and 'content'")
        if message["role"] not in ROLES:
            raise MissingFieldError(fields.key("messages"),
                                    f"message {position} has role {message['role']!r}, expected one of {', '.join(ROLES)}")
        if not isinstance(message["content"], str):
            raise MissingFieldError(fields.key("messages"), f"message {position}'s content must be a string")
    first_turn = next((m["role"] for m in messages if m["role"] != "system"), None)
    if first_turn == "assistant":
        raise MissingFieldError(fields.key("messages"), "the conversation starts with an assistant turn: "
                                "a user message must come first (a system message may precede it)")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def from_prompt_completion(fields: FieldReader) -> list[Message]:
    return _user_assistant(fields.text("prompt"), _answer_or_none(fields, "completion"))


def _history_turns(fields: FieldReader) -> list[Message]:
    """Alpaca-style ``history``: ``[[user, assistant], ...]`` before the current instruction."""
    turns = []
    for pair in fields.get("history", []) or []:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(isinstance(text, str) for text in pair):
            raise MissingFieldError(fields.key("history"), "expected a list of [user, assistant] pairs of strings")
        turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return turns


def from_instruction(fields: FieldReader) -> list[Message]:
    prompt = fields.text("instruction")
    if fields.has("input"):
        prompt = f"{prompt}\n\n{fields.text('input')}"
    system = [{"role": "system", "content": fields.text("system")}] if fields.has("system") else []
    return system + _history_turns(fields) + _user_assistant(prompt, _answer_or_none(fields, "output"))


def qa_answers(fields: FieldReader) -> list[str]:
    """A QA record's acceptable answers: one string, or a list of them (SQuAD keeps several)."""
    answer = fields.get("answer")
    if answer is None or answer == "" or answer == []:
        return []
    if isinstance(answer, str):
        return [answer]
    if isinstance(answer, list) and all(isinstance(text, str) and text for text in answer):
        return list(answer)
    raise MissingFieldError(fields.key("answer"), "expected a non-empty string or a list of acceptable strings")


def from_qa(fields: FieldReader) -> list[Message]:
    """Trains on the first acceptable answer; all of them count when the reply is scored."""
    prompt = fields.text("question")
    if fields.has("context"):
        prompt = f"{fields.text('context')}\n\nQuestion: {prompt}"
    answers = qa_answers(fields)
    return _user_assistant(prompt, answers[0] if answers else None)


def from_math(fields: FieldReader) -> list[Message]:
    prompt = f"{fields.text('problem')}\n\n{MATH_INSTRUCTION}"
    return _user_assistant(prompt, _answer_or_none(fields, "solution"))


def from_think(fields: FieldReader) -> list[Message]:
    answer = None
    if fields.has("answer"):
        answer = f"<think>\n{fields.text('think')}\n</think>\n\n{fields.text('answer')}"
    return _user_assistant(fields.text("question"), answer)


CONVERTERS: dict[str, Callable[[FieldReader], list[Message]]] = {
    "typed": from_typed,
    "messages": from_messages,
    "prompt_completion": from_prompt_completion,
    "instruction": from_instruction,
    "qa": from_qa,
    "math": from_math,
    "think": from_think,
}


def to_messages(
    record: Record,
    record_format: str,
    renames: Mapping[str, str] | None = None,
    system_prompt: str | None = None,
) -> list[Message]:
    """Turn one record into chat messages; a configured system prompt goes first unless one exists."""
    if record_format not in CONVERTERS:
        raise ValueError(f"unknown data format '{record_format}': choose one of {', '.join(FORMATS)}")
    messages = CONVERTERS[record_format](FieldReader(record, renames))
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}] + messages
    return messages


def split_prompt(messages: list[Message]) -> list[Message]:
    """The messages a model answers: everything before a trailing assistant turn."""
    if messages and messages[-1]["role"] == "assistant":
        return messages[:-1]
    return messages
