"""How a conversation longer than ``data.max_length`` tokens is cut.

Cutting the last tokens (TRL's ``keep_start``, the usual default) removes the answer, and an
example with no trained token left is dropped: a reading-comprehension record with a long context or
a reasoning trace is lost exactly when it is long. So the default, ``keep_answer``, cuts the prompt
instead, the way a person would shorten it:

1. the oldest exchanges go first (the system message stays), then
2. the start of the last user message (a long context loses its beginning; the question, at its end,
   stays),

and an answer that would not fit even without the whole last user message is cut at its end, after
that message keeps only as much of its end as leaves the answer half of ``max_length`` (a question
with the start of its answer teaches more than the answer alone, and a long question never takes the
answer's room); where the template and earlier messages alone take half, the question stays whole.
``keep_start`` (cut the end) and ``keep_end`` (cut the start, as TRL's ``keep_end``) are the token
cuts. Every candidate is rendered by the chat template (``chat_tokens.tokenize_conversation``), so a
cut conversation is still a well-formed one.

>>> messages = [{"role": "user", "content": "a long context. What is it?"}, {"role": "assistant", "content": "ok"}]
>>> whole = tokenize_conversation(tokenizer, messages)["input_ids"]
>>> cut, was_cut = fit_conversation(tokenizer, messages, "all_assistant", None, len(whole) - 6, "keep_answer")
>>> was_cut, tokenizer.decode(cut["input_ids"])
(True, '<|im_start|>user\\n context. What is it?<|im_end|>\\n<|im_start|>assistant\\nok<|im_end|>\\n')
"""

from typing import Any, Literal, get_args

from core.record import Message
from datamodules.chat_tokens import tokenize_conversation

Truncation = Literal["keep_answer", "keep_start", "keep_end"]
TRUNCATIONS: tuple[str, ...] = get_args(Truncation)


def fit_conversation(tokenizer: Any, messages: list[Message], train_on: str, tools: list[dict] | None,
                     max_length: int | None, truncation: str = "keep_answer") -> tuple[dict[str, list[int]], bool]:
    """(``input_ids`` and ``labels`` of at most ``max_length`` tokens, whether anything was cut)."""
    if truncation not in TRUNCATIONS:
        raise ValueError(f"data.truncation must be one of {TRUNCATIONS}, got '{truncation}'")
    example = tokenize_conversation(tokenizer, messages, train_on, tools)
    if max_length is None or len(example["input_ids"]) <= max_length:
        return example, False
    if truncation == "keep_end":
        return {key: values[-max_length:] for key, values in example.items()}, True
    if truncation == "keep_answer":
        example = shorter_prompt(tokenizer, messages, train_on, tools, max_length) or example
    return {key: values[:max_length] for key, values in example.items()}, True


def shorter_prompt(tokenizer: Any, messages: list[Message], train_on: str, tools: list[dict] | None,
                   max_length: int) -> dict[str, list[int]] | None:
    """The conversation with its prompt shortened as the module docstring says, as short as needed
    (still too long if its answer is: the caller then cuts the answer's end); None if it has no user
    message before its answer to shorten."""
    def render(candidate):
        return tokenize_conversation(tokenizer, candidate, train_on, tools)

    candidate = list(messages)
    while len(exchanges_after_system(candidate)) > 1:  # 1. the oldest exchange, whole
        candidate = drop_oldest_exchange(candidate)
        example = render(candidate)
        if len(example["input_ids"]) <= max_length:
            return example
    last_user = max((i for i, message in enumerate(candidate) if message["role"] == "user"), default=None)
    if last_user is None or not _answered_after(candidate, last_user):
        return None
    return _cut_message_start(candidate, last_user, render, tokenizer, max_length)


def exchanges_after_system(messages: list[Message]) -> list[int]:
    """Indices where an exchange starts: every user message after the leading system message(s).

    >>> exchanges_after_system([{"role": "system"}, {"role": "user"}, {"role": "assistant"}, {"role": "user"}])
    [1, 3]
    """
    return [i for i, message in enumerate(messages) if message["role"] == "user"]


def drop_oldest_exchange(messages: list[Message]) -> list[Message]:
    """Without the first exchange (its user message up to the next user message); system stays.

    >>> roles = [m["role"] for m in drop_oldest_exchange(
    ...     [{"role": "system"}, {"role": "user"}, {"role": "assistant"}, {"role": "user"}, {"role": "assistant"}])]
    >>> roles
    ['system', 'user', 'assistant']
    """
    first, second = exchanges_after_system(messages)[:2]
    return messages[:first] + messages[second:]


def _answered_after(messages: list[Message], index: int) -> bool:
    return any(message["role"] == "assistant" for message in messages[index + 1 :])


def _cut_message_start(messages: list[Message], index: int, render, tokenizer: Any,
                       max_length: int) -> dict[str, list[int]]:
    """Drop the fewest leading tokens of message ``index``'s text that make the rendering fit; if even
    all of them would not do (the answer is longer than the room), the fewest that leave the answer
    half of ``max_length`` before the caller cuts its end, or none if no cut does (binary searches: a
    longer cut never renders longer, and never moves the answer later)."""
    content_ids = tokenizer(messages[index]["content"], add_special_tokens=False)["input_ids"]

    def without_first(count: int) -> dict[str, list[int]]:
        shortened = {**messages[index], "content": tokenizer.decode(content_ids[count:])}
        return render(messages[:index] + [shortened] + messages[index + 1 :])

    def fits(count: int) -> bool:
        return len(without_first(count)["input_ids"]) <= max_length

    def leaves_the_answer_half(count: int) -> bool:
        kept_labels = without_first(count)["labels"][:max_length]
        return sum(label != -100 for label in kept_labels) >= max_length // 2

    everything = len(content_ids)
    enough = fits if fits(everything) else leaves_the_answer_half
    if not enough(everything):  # the template and earlier messages alone take half: no question is worth losing
        return render(messages)
    return without_first(fewest_satisfying(enough, everything))


def fewest_satisfying(predicate, most: int) -> int:
    """The smallest ``count`` in ``0..most`` with ``predicate(count)``, for a predicate that stays true
    once it is (``predicate(most)`` is).

    >>> fewest_satisfying(lambda count: count * count >= 50, 10)
    8
    """
    low, high = 0, most
    while low < high:
        middle = (low + high) // 2
        if predicate(middle):
            high = middle
        else:
            low = middle + 1
    return low
