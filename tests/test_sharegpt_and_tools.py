"""ShareGPT records, and tool calls / tool results / reasoning in conversations, rendered by the
tokenizer's own template (tokenizer of tests/tiny.py: byte b has id b) with hand-checked labels."""

import json

import pytest

from core.errors import RecordError
from datamodules.chat_tokens import IGNORE_INDEX, tokenize_conversation
from datamodules.formats import to_messages
from datamodules.normalize import ConversationSpec, read_records
from datamodules.preprocess import build_prompt_examples, build_training_examples
from tests.tiny import IM_END, IM_START, build_tokenizer, byte_ids

NEWLINE = 10
# ChatML that also prints the tools, the reasoning and the tool calls, the way tool-calling templates do.
TOOL_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\\nTools: ' + tools | tojson + '<|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message.reasoning_content %}{{ '<think>' + message.reasoning_content + '</think>' }}{% endif %}"
    "{{ message['content'] }}"
    "{% for call in message.tool_calls or [] %}"
    "{{ '<call>' + call.function.name + ' ' + call.function.arguments | tojson + '</call>' }}"
    "{% endfor %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TOOLS = [{"type": "function", "function": {"name": "weather"}}]
TOOL_CONVERSATION = [  # OpenAI style: arguments as JSON text, content null on the tool-call turn
    {"role": "user", "content": "Weather?"},
    {"role": "assistant", "content": None,
     "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
    {"role": "assistant", "content": "It is sunny.", "reasoning_content": "look"},
]


@pytest.fixture(scope="module")
def tool_tokenizer():
    tokenizer = build_tokenizer()
    tokenizer.chat_template = TOOL_TEMPLATE
    return tokenizer


def header(role: str) -> list[int]:
    return [IM_START] + byte_ids(f"{role}\n")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


# ShareGPT -----------------------------------------------------------------------------------------
def test_sharegpt_maps_speakers_system_function_calls_and_observations():
    record = {"system": "Be brief.", "tools": json.dumps(TOOLS), "conversations": [
        {"from": "human", "value": "Weather?"},
        {"from": "function_call", "value": json.dumps({"name": "weather", "arguments": {"city": "Paris"}})},
        {"from": "observation", "value": "sunny"},
        {"from": "gpt", "value": "It is sunny."},
    ]}
    assert to_messages(record, "sharegpt") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "It is sunny."},
    ]


def test_sharegpt_speaker_names_and_keys_are_configurable():
    record = {"dialog": [{"speaker": "person", "text": "hi"}, {"speaker": "bot", "text": "yo"}]}
    messages = to_messages(record, "sharegpt", renames={"conversations": "dialog", "from": "speaker", "value": "text"},
                           roles={"person": "user", "bot": "assistant"})
    assert messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]


def test_sharegpt_records_are_generic_generate_scored_on_the_last_assistant_turn(tmp_path):
    path = write_jsonl(tmp_path / "sharegpt.jsonl", [{"tools": TOOLS, "conversations": [
        {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}])
    [record] = read_records(path, ConversationSpec("sharegpt"))
    assert (record.type, record.metric, record.reference.answers) == ("generic-generate", "rouge", ("Hello",))
    assert record.prompt_messages == [{"role": "user", "content": "Hi"}]
    assert record.tools == TOOLS


def test_unknown_sharegpt_speaker_names_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "robot", "value": "Hello"}]},
    ])
    with pytest.raises(RecordError) as caught:
        read_records(path, ConversationSpec("sharegpt"))
    message = str(caught.value)
    assert "bad.jsonl, line 2" in message and "'conversations'" in message and "'robot'" in message
    assert "--data.roles" in message


# Tool calls and reasoning in `messages` -----------------------------------------------------------
def expected_tool_ids() -> tuple[list[int], list[int]]:
    """The whole conversation's ids, and the trained ones: both assistant turns, never the tool result."""
    tools_turn = [IM_START] + byte_ids("system\nTools: " + json.dumps(TOOLS)) + [IM_END, NEWLINE]
    user = header("user") + byte_ids("Weather?") + [IM_END, NEWLINE]
    call = byte_ids('<call>weather {"city": "Paris"}</call>') + [IM_END, NEWLINE]
    tool = header("tool") + byte_ids("sunny") + [IM_END, NEWLINE]
    answer = byte_ids("<think>look</think>It is sunny.") + [IM_END, NEWLINE]
    input_ids = tools_turn + user + header("assistant") + call + tool + header("assistant") + answer
    return input_ids, call + answer


def test_tool_calls_tool_results_and_reasoning_reach_the_template_with_per_turn_labels(tool_tokenizer):
    messages = to_messages({"messages": TOOL_CONVERSATION}, "messages")
    assert messages[2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
    example = tokenize_conversation(tool_tokenizer, messages, tools=TOOLS)
    input_ids, trained_ids = expected_tool_ids()
    assert example["input_ids"] == input_ids
    assert [label for label in example["labels"] if label != IGNORE_INDEX] == trained_ids
    tool_start = [i for i, token in enumerate(input_ids) if token == IM_START][3]  # the tool turn's header
    tool_end = tool_start + len(header("tool") + byte_ids("sunny")) + 2
    assert example["labels"][tool_start:tool_end] == [IGNORE_INDEX] * (tool_end - tool_start)


def test_tool_conversations_survive_the_file_and_arrow_round_trips(tmp_path, tool_tokenizer):
    """Tool calls with different argument objects, tools on one record only: ``Dataset.from_list`` (arrow)
    would give each object the keys of the others as nulls; none may reach the template."""
    other = [{"role": "user", "content": "Sum?"},
             {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "add", "arguments": {"x": 1}}}]},
             {"role": "tool", "content": "1"}, {"role": "assistant", "content": "1"}]
    weather = json.loads(json.dumps(TOOL_CONVERSATION))
    weather[1]["tool_calls"][0]["function"]["arguments"] = {"city": "Paris"}  # an object, as in `other`
    path = write_jsonl(tmp_path / "tools.jsonl", [{"messages": weather, "tools": TOOLS}, {"messages": other}])
    records = read_records(path, ConversationSpec("messages"))
    assert records[0].messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert records[1].tools is None and "reasoning_content" not in records[1].messages[3]
    examples, _ = build_training_examples(records, tool_tokenizer, "all_assistant", None, path)
    input_ids, trained_ids = expected_tool_ids()
    assert examples[0]["input_ids"] == input_ids
    assert [label for label in examples[0]["labels"] if label != IGNORE_INDEX] == trained_ids
    prompts = build_prompt_examples(records, tool_tokenizer, path)
    assert prompts[0]["prompt_ids"] == input_ids[: -len(byte_ids("<think>look</think>It is sunny.")) - 2]


# SmolLM2-135M-Instruct's own chat template (from the embedded model's folder): plain ChatML that
# prints neither tools nor tool calls.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    tokenizer = build_tokenizer()
    tokenizer.chat_template = SMOLLM2_TEMPLATE
    return tokenizer


def test_a_template_that_drops_tool_calls_is_refused_rather_than_trained_as_an_empty_answer(smollm2_tokenizer):
    from datamodules.chat_tokens import TemplateDropsToolCallsError

    messages = to_messages({"messages": TOOL_CONVERSATION}, "messages")
    with pytest.raises(TemplateDropsToolCallsError, match="does not render tool calls"):
        tokenize_conversation(smollm2_tokenizer, messages, tools=TOOLS)


def test_smollm2_template_trains_tool_results_never_and_the_final_answer_exactly(smollm2_tokenizer):
    """Without tool calls, a tool turn still renders under SmolLM2's template and stays untrained."""
    conversation = [{"role": "user", "content": "Weather?"}, {"role": "tool", "content": "sunny"},
                    {"role": "assistant", "content": "It is sunny."}]
    example = tokenize_conversation(smollm2_tokenizer, to_messages({"messages": conversation}, "messages"), tools=TOOLS)
    system = header("system") + byte_ids("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
    expected = (system + [IM_END, NEWLINE] + header("user") + byte_ids("Weather?") + [IM_END, NEWLINE]
                + header("tool") + byte_ids("sunny") + [IM_END, NEWLINE] + header("assistant")
                + byte_ids("It is sunny.") + [IM_END, NEWLINE])
    assert example["input_ids"] == expected
    assert [label for label in example["labels"] if label != IGNORE_INDEX] == byte_ids("It is sunny.") + [IM_END, NEWLINE]
