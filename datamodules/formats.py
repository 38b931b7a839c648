"""Record formats: one pure function per format turns a record into chat messages.

Every format ends up as the same thing, a list of ``{"role", "content"}`` messages (assistant turns
may also carry ``tool_calls`` and ``reasoning_content``, tool turns ``tool_call_id`` and ``name``), so
that one piece of code (``chat_tokens.py``) renders and masks all of them. A record without its answer
(a user's test set) yields the messages up to the last user turn; the prompt for generation is
rendered from exactly those messages, the same way training renders them.

Field names can be remapped per dataset (``fields={"question": "Question"}``) so data whose keys
differ needs YAML, not code.

>>> to_messages({"question": "2+2?", "answer": "4"}, "qa")
[{'role': 'user', 'content': '2+2?'}, {'role': 'assistant', 'content': '4'}]
"""

import json
from collections.abc import Callable, Mapping
from typing import Any, Literal, get_args

from core.errors import MissingFieldError
from core.record import Message

Format = Literal["typed", "messages", "sharegpt", "prompt_completion", "instruction", "qa", "math", "think"]
FORMATS: tuple[str, ...] = get_args(Format)
ROLES = ("system", "user", "assistant", "tool")  # what chat templates know; a typo would be rendered as a role
# Besides role and content, what a turn of that role keeps for the chat template (tool calling, reasoning).
EXTRA_KEYS = {"assistant": ("tool_calls", "reasoning_content"), "tool": ("tool_call_id", "name")}

SpeakerRole = Literal["system", "user", "assistant", "tool", "function_call"]
"""What a ShareGPT speaker is: a role, or ``function_call`` (an assistant turn whose value is a tool call)."""
SHAREGPT_ROLES: dict[str, str] = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "tool": "tool", "observation": "tool", "function": "tool", "function_call": "function_call",
}
FORMATS_WITH_TOOLS = ("messages", "sharegpt")  # formats whose records may give a ``tools`` list
TYPED_QUESTION_TYPES = ("choice", "code-generate", "generic-generate", "math")

# The question type of every record of a format without a ``type`` field.
FORMAT_QUESTION_TYPES = {
    "messages": "generic-generate",
    "sharegpt": "generic-generate",
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


def _parse_json_text(value: Any) -> Any:
    """OpenAI and LLaMA-Factory files give tool arguments and tool lists as JSON text; templates want objects."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _without_nulls(value: Any) -> Any:
    """Drops null entries of objects, at any depth: a table file (parquet, arrow) gives every object the
    keys of all its siblings in the file, the missing ones as null."""
    if isinstance(value, Mapping):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


def _tool_calls(calls: Any, key: str, position: int) -> list[dict]:
    """``[{"type": "function", "function": {"name", "arguments"}}]`` (OpenAI), arguments as an object."""
    if not isinstance(calls, list) or not all(isinstance(call, Mapping) for call in calls):
        raise MissingFieldError(key, f"message {position}'s tool_calls must be a list of objects")
    cleaned = []
    for call in map(_without_nulls, calls):
        function = dict(call.get("function", call))  # {name, arguments} alone is accepted too
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise MissingFieldError(key, f"message {position} has a tool call without a function name")
        function["arguments"] = _without_nulls(_parse_json_text(function.get("arguments", {})))
        cleaned.append({**{k: v for k, v in call.items() if k not in ("name", "arguments")},
                        "type": call.get("type", "function"), "function": function})
    return cleaned


def _check_turn(message: Any, position: int, key: str) -> Message:
    """One conversation turn, checked, with the keys its role keeps (tool calls, reasoning)."""
    if not isinstance(message, Mapping) or "role" not in message:
        raise MissingFieldError(key, f"message {position} needs 'role' and 'content'")
    role = message["role"]
    if role not in ROLES:
        raise MissingFieldError(key, f"message {position} has role {role!r}, expected one of {', '.join(ROLES)}")
    has_calls = role == "assistant" and message.get("tool_calls")
    content = message.get("content")
    if content is None and has_calls:
        content = ""  # a turn that only calls tools
    if "content" not in message and not has_calls:
        raise MissingFieldError(key, f"message {position} needs 'role' and 'content'")
    if not isinstance(content, str):
        raise MissingFieldError(key, f"message {position}'s content must be a string")
    turn: Message = {"role": role, "content": content}
    for extra in EXTRA_KEYS.get(role, ()):
        if message.get(extra) is not None:
            turn[extra] = message[extra]
    if has_calls:
        turn["tool_calls"] = _tool_calls(message["tool_calls"], key, position)
    return turn


def _checked_conversation(turns: list, key: str) -> list[Message]:
    messages = [_check_turn(message, position, key) for position, message in enumerate(turns)]
    first_turn = next((m["role"] for m in messages if m["role"] != "system"), None)
    if first_turn == "assistant":
        raise MissingFieldError(key, "the conversation starts with an assistant turn: "
                                "a user message must come first (a system message may precede it)")
    return messages


def from_messages(fields: FieldReader) -> list[Message]:
    messages = fields.get("messages")
    if not isinstance(messages, list) or not messages:
        raise MissingFieldError(fields.key("messages"), "expected a non-empty list of {role, content}")
    return _checked_conversation(messages, fields.key("messages"))


def _sharegpt_turn(turn: Any, position: int, fields: FieldReader, speakers: Mapping[str, str]) -> dict:
    """``{from, value}`` → ``{role, content}``; a ``function_call`` value is the JSON of the call(s)."""
    key, speaker_key, value_key = fields.key("conversations"), fields.key("from"), fields.key("value")
    if not isinstance(turn, Mapping) or not isinstance(turn.get(value_key), str):
        raise MissingFieldError(key, f"turn {position} needs '{speaker_key}' and a string '{value_key}'")
    speaker = turn.get(speaker_key)
    if speaker not in speakers:
        raise MissingFieldError(key, f"turn {position} is from {speaker!r}, expected one of {', '.join(speakers)} "
                                "(map other speakers with --data.roles, e.g. '{bot: assistant}')")
    if speakers[speaker] != "function_call":
        return {"role": speakers[speaker], "content": turn[value_key]}
    calls = _parse_json_text(turn[value_key])
    return {"role": "assistant", "content": "", "tool_calls": calls if isinstance(calls, list) else [calls]}


def from_sharegpt(fields: FieldReader, roles: Mapping[str, str] | None = None) -> list[Message]:
    """ShareGPT / LLaMA-Factory: ``conversations: [{from, value}]``, optional ``system`` and ``tools``.

    >>> from_sharegpt(FieldReader({"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "yo"}]}),
    ...               roles={"bot": "assistant"})
    [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'yo'}]
    """
    turns = fields.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise MissingFieldError(fields.key("conversations"), "expected a non-empty list of {from, value}")
    speakers = {**SHAREGPT_ROLES, **(roles or {})}
    messages = [_sharegpt_turn(turn, position, fields, speakers) for position, turn in enumerate(turns)]
    if fields.has("system") and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": fields.text("system")})
    return _checked_conversation(messages, fields.key("conversations"))


def tools_of(fields: FieldReader, record_format: str) -> list[dict] | None:
    """A record's ``tools`` (JSON schemas of the functions it may call), for the chat template; None if absent."""
    if record_format not in FORMATS_WITH_TOOLS or not fields.has("tools"):
        return None
    tools = _parse_json_text(fields.get("tools"))
    if not isinstance(tools, list) or not all(isinstance(tool, Mapping) for tool in tools):
        raise MissingFieldError(fields.key("tools"), "expected a list of tool schemas (objects), or its JSON text")
    return _without_nulls(tools) or None


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
    "sharegpt": from_sharegpt,
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
    roles: Mapping[str, str] | None = None,
) -> list[Message]:
    """Turn one record into chat messages; a configured system prompt goes first unless one exists.
    ``roles`` maps ShareGPT speaker names to roles, over the usual ones (``SHAREGPT_ROLES``)."""
    if record_format not in CONVERTERS:
        raise ValueError(f"unknown data format '{record_format}': choose one of {', '.join(FORMATS)}")
    fields = FieldReader(record, renames)
    messages = from_sharegpt(fields, roles) if record_format == "sharegpt" else CONVERTERS[record_format](fields)
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}] + messages
    return messages


def split_prompt(messages: list[Message]) -> list[Message]:
    """The messages a model answers: everything before a trailing assistant turn."""
    if messages and messages[-1]["role"] == "assistant":
        return messages[:-1]
    return messages
