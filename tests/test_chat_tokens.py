"""Label masking with hand-checked ids (tokenizer of tests/tiny.py: byte b has id b)."""

import pytest

from datamodules.chat_tokens import (
    IGNORE_INDEX,
    TemplateNotPrefixStableError,
    count_trained,
    render_ids,
    tokenize_conversation,
)
from datamodules.chat_tokens import answer_position
from datamodules.collate import training_collator
from datamodules.formats import to_messages
from tests.tiny import IM_END, IM_START, byte_ids

NEWLINE = 10


def turn(role: str, content: str) -> list[int]:
    return [IM_START] + byte_ids(f"{role}\n{content}") + [IM_END, NEWLINE]


def trained(labels: list[int]) -> list[int]:
    return [label for label in labels if label != IGNORE_INDEX]


def test_single_turn_trains_answer_end_of_turn_and_newline_only(tokenizer):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    example = tokenize_conversation(tokenizer, messages)

    assert example["input_ids"] == turn("user", "hi") + turn("assistant", "hello")
    header = [IM_START] + byte_ids("assistant\n")
    prompt_length = len(turn("user", "hi")) + len(header)
    assert example["labels"] == [IGNORE_INDEX] * prompt_length + byte_ids("hello") + [IM_END, NEWLINE]


def test_multi_turn_with_system_trains_every_assistant_turn(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3+3?"},
        {"role": "assistant", "content": "6"},
    ]
    example = tokenize_conversation(tokenizer, messages)
    assert example["input_ids"] == (
        turn("system", "Be brief.") + turn("user", "2+2?") + turn("assistant", "4")
        + turn("user", "and 3+3?") + turn("assistant", "6")
    )
    assert trained(example["labels"]) == byte_ids("4") + [IM_END, NEWLINE] + byte_ids("6") + [IM_END, NEWLINE]
    # The first answer sits right after its header, at the position hand-computed here.
    first_answer_at = len(turn("system", "Be brief.") + turn("user", "2+2?")) + len(byte_ids("assistant\n")) + 1
    assert example["labels"][first_answer_at] == ord("4")
    assert example["labels"][first_answer_at - 1] == IGNORE_INDEX

    last_only = tokenize_conversation(tokenizer, messages, train_on="last_assistant")
    assert trained(last_only["labels"]) == byte_ids("6") + [IM_END, NEWLINE]


def test_think_format_trains_reasoning_and_answer(tokenizer):
    record = {"question": "1+1?", "think": "one plus one", "answer": "2"}
    example = tokenize_conversation(tokenizer, to_messages(record, "think"))
    expected = byte_ids("<think>\none plus one\n</think>\n\n2") + [IM_END, NEWLINE]
    assert trained(example["labels"]) == expected


def test_input_ids_equal_the_tokenizers_own_rendering(tokenizer):
    messages = to_messages({"instruction": "Say yes", "output": "yes", "history": [["hi", "hello"]]}, "instruction")
    own = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert tokenize_conversation(tokenizer, messages)["input_ids"] == list(own)


def test_end_of_turn_stays_trained_after_padding_with_the_same_token(tokenizer):
    """pad == eos == <|im_end|>: padding must not erase the trained <|im_end|>."""
    short = tokenize_conversation(tokenizer, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    long = tokenize_conversation(tokenizer, [{"role": "user", "content": "aaaa"}, {"role": "assistant", "content": "bbbb"}])
    for position, example in enumerate([short, long]):
        example.update(id=str(position), row_index=position, record_type="",
                       answer_position=answer_position(example["labels"]))
    batch = training_collator(pad_token_id=tokenizer.pad_token_id)([short, long])
    row = batch["labels"][0].tolist()
    length = len(short["input_ids"])
    assert row[length - 2] == IM_END  # the trained end of turn
    assert row[length:] == [IGNORE_INDEX] * (len(long["input_ids"]) - length)  # padding is not trained
    assert batch["input_ids"][0, length:].tolist() == [IM_END] * (len(long["input_ids"]) - length)
    assert batch["attention_mask"][0].tolist() == [1] * length + [0] * (len(long["input_ids"]) - length)


def test_count_trained_ignores_position_zero():
    assert count_trained([5, IGNORE_INDEX, 7, 8]) == 2


def test_template_that_rewrites_earlier_turns_is_refused_for_all_turns(tokenizer):
    """A template that shows only the latest answer in full breaks the prefix property."""
    template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
        "{{ '<|im_start|>assistant\\n...<|im_end|>\\n' }}{% else %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    import copy

    custom = copy.deepcopy(tokenizer)
    custom.chat_template = template
    messages = [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"},
    ]
    with pytest.raises(TemplateNotPrefixStableError, match="last_assistant"):
        tokenize_conversation(custom, messages)
    assert trained(tokenize_conversation(custom, messages, "last_assistant")["labels"]) == byte_ids("d") + [IM_END, NEWLINE]


def test_generation_prompt_is_the_training_prompt(tokenizer):
    """The prompt predict renders is exactly the untrained prefix training uses."""
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    example = tokenize_conversation(tokenizer, messages)
    prompt = render_ids(tokenizer, messages[:1], add_generation_prompt=True)
    first_trained = next(i for i, label in enumerate(example["labels"]) if label != IGNORE_INDEX)
    assert example["input_ids"][:first_trained] == prompt
