"""Chat messages → token ids and labels masked to the assistant's answers.

This is the one place where conversations are rendered, for training and for generation alike:
``render_ids`` is the tokenizer's own chat template, nothing hand-written, so a template change in
the model is picked up everywhere at once.

Which tokens are trained? For each trained assistant turn, exactly the tokens TRL 1.16's
``SFTTrainer`` trains when the conversation is cut at that turn in prompt-completion form:

- prompt     = every message before the turn, rendered with the generation prompt
               (``<|im_start|>assistant\\n`` for ChatML), so the role header is NOT trained;
- completion = the turn itself: the answer, the end-of-turn token (``<|im_end|>``) and whatever the
               template puts after it (a newline for ChatML).

It works for any template, also those TRL's ``assistant_only_loss`` refuses (they lack the
``{% generation %}`` marker), because it only needs the template to render a conversation's
prefix as a prefix of the whole.

>>> example = tokenize_conversation(tokenizer, [{"role": "user", "content": "hi"},
...                                             {"role": "assistant", "content": "hello"}])
>>> trained = [label for label in example["labels"] if label != -100]   # the rest is -100
>>> tokenizer.decode(trained)
'hello<|im_end|>\\n'
>>> example["labels"][: -len(trained)] == [-100] * (len(example["labels"]) - len(trained))
True
"""

from typing import Any, Literal, get_args

from trl.data_utils import common_prefix_length

from core.constants import IGNORE_INDEX
from core.record import Message

TrainOn = Literal["all_assistant", "last_assistant"]
TRAIN_ON_CHOICES: tuple[str, ...] = get_args(TrainOn)


class TemplateDropsToolCallsError(ValueError):
    """The chat template renders an assistant turn the same with and without its tool calls."""


class TemplateNotPrefixStableError(ValueError):
    """The chat template renders an earlier turn differently once later turns follow it."""


def render_ids(tokenizer: Any, messages: list[Message], add_generation_prompt: bool = False,
               tools: list[dict] | None = None) -> list[int]:
    """The tokenizer's own rendering of ``messages`` (and the ``tools`` they may call) as token ids."""
    rendered = tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=True, return_dict=True, add_generation_prompt=add_generation_prompt
    )
    return list(rendered["input_ids"])


def prompt_ids_for_generation(tokenizer: Any, prompt_messages: list[Message],
                              tools: list[dict] | None = None) -> list[int]:
    """Token ids a model continues from to answer ``prompt_messages`` (same rendering as training)."""
    return render_ids(tokenizer, prompt_messages, add_generation_prompt=True, tools=tools)


def trained_turn_indices(messages: list[Message], train_on: str) -> list[int]:
    """Indices of the assistant messages whose tokens are trained (tool calls included; tool results never)."""
    if train_on not in TRAIN_ON_CHOICES:
        raise ValueError(f"train_on must be one of {TRAIN_ON_CHOICES}, got '{train_on}'")
    assistant_turns = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
    return assistant_turns[-1:] if train_on == "last_assistant" else assistant_turns


def _turn_span(tokenizer: Any, messages: list[Message], turn: int, full_ids: list[int],
               tools: list[dict] | None = None) -> tuple[int, int]:
    """Start and end (exclusive) in ``full_ids`` of the tokens trained for assistant turn ``turn``."""
    prompt_ids = render_ids(tokenizer, messages[:turn], add_generation_prompt=True, tools=tools)
    through_turn_ids = render_ids(tokenizer, messages[: turn + 1], tools=tools)
    if full_ids[: len(through_turn_ids)] != through_turn_ids:
        raise TemplateNotPrefixStableError(
            f"the chat template renders the conversation up to assistant turn {turn} differently once later "
            "turns follow (some templates drop earlier reasoning): train only the last turn with "
            "train_on: last_assistant, or use a template that renders prefixes stably"
        )
    if messages[turn].get("tool_calls"):
        _require_rendered_tool_calls(tokenizer, messages[: turn + 1], through_turn_ids, tools)
    # Like TRL: the completion starts where prompt and prompt+completion diverge.
    return common_prefix_length(prompt_ids, through_turn_ids), len(through_turn_ids)


def _require_rendered_tool_calls(tokenizer: Any, messages: list[Message], rendered_ids: list[int],
                                 tools: list[dict] | None) -> None:
    """A template that ignores ``tool_calls`` (SmolLM2's does) renders a tool-call turn as an empty
    answer: training would teach the model to end its turn at once. Stop instead."""
    without_calls = [*messages[:-1], {key: value for key, value in messages[-1].items() if key != "tool_calls"}]
    if render_ids(tokenizer, without_calls, tools=tools) == rendered_ids:
        raise TemplateDropsToolCallsError(
            "this model's chat template does not render tool calls (an assistant turn with tool_calls would be "
            "trained as an empty answer): use a model whose template supports tools, or set model.chat_template "
            "to a template file that renders message.tool_calls"
        )


def tokenize_conversation(
    tokenizer: Any, messages: list[Message], train_on: str = "all_assistant", tools: list[dict] | None = None
) -> dict[str, list[int]]:
    """``input_ids`` of the whole conversation and ``labels`` that are -100 except on trained tokens."""
    full_ids = render_ids(tokenizer, messages, tools=tools)
    labels = [IGNORE_INDEX] * len(full_ids)
    for turn in trained_turn_indices(messages, train_on):
        start, end = _turn_span(tokenizer, messages, turn, full_ids, tools)
        labels[start:end] = full_ids[start:end]
    return {"input_ids": full_ids, "labels": labels}


def count_trained(labels: list[int]) -> int:
    """Trained tokens that reach the loss: position 0 is never predicted (logits shift by one)."""
    return sum(1 for label in labels[1:] if label != IGNORE_INDEX)


def truncate(example: dict[str, list[int]], max_length: int | None) -> tuple[dict[str, list[int]], bool]:
    """Cut an example to ``max_length`` tokens (right side); say whether anything was cut."""
    if max_length is None or len(example["input_ids"]) <= max_length:
        return example, False
    return {key: values[:max_length] for key, values in example.items()}, True


def answer_position(labels: list[int], ignore_index: int = IGNORE_INDEX) -> int:
    """Index of the last prompt token before the last trained span: where the answer is predicted."""
    position = len(labels) - 1
    while position > 0 and labels[position] == ignore_index:
        position -= 1  # skip untrained tail (none for single-turn records)
    while position > 0 and labels[position - 1] != ignore_index:
        position -= 1  # walk back to the start of the trained span
    return max(position - 1, 0)
