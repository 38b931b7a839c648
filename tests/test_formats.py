"""Record formats → chat messages, field renames and the errors people see for bad input."""

import json

import pytest

from datamodules.formats import MATH_INSTRUCTION, split_prompt, to_messages
from datamodules.normalize import ConversationSpec, read_records
from datamodules.preprocess import build_prompt_examples, build_training_examples
from core.errors import RecordError
from datamodules.record_loading import load_records
from tests.tiny import IM_END, IM_START


def user_assistant(prompt, answer):
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def test_typed_choice_renders_options_in_letter_order():
    record = {"id": "c1", "type": "choice", "prompt": "Pick the even number.", "choices": {"B": "4", "A": "3"},
              "answer": "B"}
    messages = to_messages(record, "typed")
    assert messages[0]["content"] == (
        "Pick the even number.\n\nA. 3\nB. 4\n\nAnswer with the letter of the correct option."
    )
    assert messages[1] == {"role": "assistant", "content": "B"}


def test_typed_without_answer_is_a_prompt_only():
    messages = to_messages({"type": "generic-generate", "prompt": "Say hi"}, "typed")
    assert messages == [{"role": "user", "content": "Say hi"}]


@pytest.mark.parametrize(
    "record, record_format, expected",
    [
        ({"prompt": "p", "completion": "c"}, "prompt_completion", user_assistant("p", "c")),
        ({"question": "q", "answer": "a", "context": "ctx"}, "qa", user_assistant("ctx\n\nQuestion: q", "a")),
        ({"problem": "1+1", "solution": "\\boxed{2}"}, "math", user_assistant(f"1+1\n\n{MATH_INSTRUCTION}", "\\boxed{2}")),
        ({"instruction": "Add", "input": "1 2", "output": "3"}, "instruction", user_assistant("Add\n\n1 2", "3")),
    ],
)
def test_simple_formats(record, record_format, expected):
    assert to_messages(record, record_format) == expected


def test_instruction_history_and_system_come_first():
    record = {"system": "S", "history": [["u1", "a1"]], "instruction": "u2", "output": "a2"}
    roles = [m["role"] for m in to_messages(record, "instruction")]
    assert roles == ["system", "user", "assistant", "user", "assistant"]


def test_messages_format_keeps_multi_turn_and_configured_system_prompt_goes_first():
    record = {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}
    assert to_messages(record, "messages", system_prompt="Be kind")[0] == {"role": "system", "content": "Be kind"}


def test_field_renames():
    record = {"Question": "q", "Answer": "a"}
    assert to_messages(record, "qa", renames={"question": "Question", "answer": "Answer"}) == user_assistant("q", "a")


def test_split_prompt_drops_trailing_answer():
    assert split_prompt(user_assistant("p", "a")) == [{"role": "user", "content": "p"}]


def write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def training_examples(path, tokenizer, record_format="qa", max_length=None, truncation="keep_answer"):
    """Read, normalise and tokenize a file the way the data module does."""
    return build_training_examples(read_records(path, ConversationSpec(record_format)), tokenizer, "all_assistant",
                                   max_length, path, truncation)


def test_broken_json_line_is_named(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", ['{"question": "q", "answer": "a"}', '{"question": "q2", "answer": '])
    with pytest.raises(RecordError) as caught:
        load_records(path)
    assert caught.value.source.endswith("bad.jsonl") and caught.value.location == "line 2"


def test_missing_field_names_file_line_and_field(tmp_path, tokenizer):
    lines = [json.dumps({"question": "q", "answer": "a"}), "", json.dumps({"question": "q2", "answer": "x"}),
             json.dumps({"answer": "a3"})]
    path = write_jsonl(tmp_path / "qa.jsonl", lines)
    with pytest.raises(RecordError, match=r"qa\.jsonl, line 4: missing or invalid field 'question'"):
        training_examples(path, tokenizer)


def test_record_without_answer_cannot_train(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "qa.jsonl", [json.dumps({"question": "q"})])
    with pytest.raises(RecordError, match="line 1: no answer to train on"):
        training_examples(path, tokenizer)


# Prompt of "user\nq" turn = 9 tokens, header "<|im_start|>assistant\n" = 11 tokens: answers start at 20.
CUT_RECORDS = [
    json.dumps({"question": "q", "answer": "ab"}),  # 20 + 2 + 2 = 24 tokens: fits
    json.dumps({"question": "q", "answer": "abcdefgh"}),  # 30 tokens: longer than 24 by its answer
    json.dumps({"question": "x" * 25 + "q", "answer": "a"}),  # 47 tokens: longer by its question
]


def test_cutting_the_end_counts_truncation_and_drops_what_has_no_answer_left(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "qa.jsonl", CUT_RECORDS)
    examples, stats = training_examples(path, tokenizer, max_length=24, truncation="keep_start")
    assert (stats.records, stats.kept, stats.truncated, stats.dropped_no_trained_tokens) == (3, 2, 2, 1)
    assert [len(ids) for ids in examples["input_ids"]] == [24, 24]
    assert examples[1]["labels"][20:] == list(b"abcd")
    assert stats.trained_tokens == 4 + 4


def test_by_default_the_question_loses_its_start_and_the_answer_stays(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "qa.jsonl", CUT_RECORDS)
    examples, stats = training_examples(path, tokenizer, max_length=24)
    assert (stats.records, stats.kept, stats.truncated, stats.dropped_no_trained_tokens) == (3, 3, 2, 0)
    # the long question keeps its last 2 bytes: 9 + 2 + 11 + answer "a", <|im_end|>, "\n" = 24 tokens
    assert examples[2]["input_ids"] == [IM_START, *b"user\nxq", IM_END, 10, IM_START, *b"assistant\n",
                                        *b"a", IM_END, 10]
    assert examples[2]["labels"] == [-100] * 21 + [*b"a", IM_END, 10]
    # an answer longer than the room whose question is short: the template alone takes 19 of 24, so
    # no cut of the question leaves the answer half (12): the question stays whole
    assert examples[1]["labels"][20:] == list(b"abcd")


def test_a_long_question_before_a_too_long_answer_leaves_it_half_the_room(tmp_path, tokenizer):
    answer = "abcdefghijklmnopqrstuvwxyz0123"  # 30 tokens: 19 (template) + 30 + 2 > 40 even without a question
    path = write_jsonl(tmp_path / "qa.jsonl", [json.dumps({"question": "x" * 25 + "q", "answer": answer})])
    examples, stats = training_examples(path, tokenizer, max_length=40)
    assert (stats.kept, stats.truncated, stats.dropped_no_trained_tokens) == (1, 1, 0)
    # the question keeps its last byte (20 prompt tokens), the answer its first 20: half of 40 each
    assert examples[0]["input_ids"] == [IM_START, *b"user\nq", IM_END, 10, IM_START, *b"assistant\n", *answer[:20].encode()]
    assert examples[0]["labels"] == [-100] * 20 + list(answer[:20].encode())
    cut_end, cut_stats = training_examples(path, tokenizer, max_length=40, truncation="keep_start")
    assert cut_stats.dropped_no_trained_tokens == 1  # the question whole leaves the answer nothing


def test_the_oldest_turns_go_first_and_the_system_message_stays(tmp_path, tokenizer):
    turns = [{"role": "system", "content": "S"}, {"role": "user", "content": "old question"},
             {"role": "assistant", "content": "old answer"}, {"role": "user", "content": "new q"},
             {"role": "assistant", "content": "new a"}]
    path = write_jsonl(tmp_path / "chat.jsonl", [json.dumps({"messages": turns})])
    whole, _ = training_examples(path, tokenizer, record_format="messages")
    examples, stats = training_examples(path, tokenizer, record_format="messages", max_length=len(whole[0]["input_ids"]) - 1)
    assert stats.truncated == 1 and stats.kept == 1
    kept = tokenizer.decode(examples[0]["input_ids"])
    assert kept == ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nnew q<|im_end|>\n"
                    "<|im_start|>assistant\nnew a<|im_end|>\n")
    assert tokenizer.decode([t for t in examples[0]["labels"] if t != -100]) == "new a<|im_end|>\n"


def test_the_end_is_kept_with_keep_end(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "qa.jsonl", CUT_RECORDS[2:])
    examples, _ = training_examples(path, tokenizer, max_length=24, truncation="keep_end")
    assert len(examples[0]["input_ids"]) == 24 and examples[0]["input_ids"][-3:] == [*b"a", IM_END, 10]


def test_prompt_examples_keep_ids_types_and_order(tmp_path, tokenizer):
    lines = [json.dumps({"id": "x9", "type": "math", "prompt": "1+1?"}),
             json.dumps({"id": "x1", "type": "generic-generate", "prompt": "hi", "answer": "hello"})]
    path = write_jsonl(tmp_path / "test.jsonl", lines)
    prompts = build_prompt_examples(read_records(path, ConversationSpec("typed")), tokenizer, path)
    assert prompts["id"] == ["x9", "x1"] and prompts["record_type"] == ["math", "generic-generate"]
    expected = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                             tokenize=True, return_dict=True)["input_ids"]
    assert prompts[1]["prompt_ids"] == list(expected)  # the answer is not part of the prompt


def test_csv_and_parquet_load_and_csv_errors_name_the_line(tmp_path, tokenizer):
    import datasets as hf_datasets

    records = [{"question": "q1", "answer": "a1"}, {"question": "", "answer": "a2"}]
    csv_path = tmp_path / "qa.csv"
    csv_path.write_text("question,answer\nq1,a1\n,a2\n", encoding="utf-8")
    parquet_path = str(tmp_path / "qa.parquet")
    hf_datasets.Dataset.from_list(records[:1]).to_parquet(parquet_path)

    examples, _ = training_examples(parquet_path, tokenizer)
    assert len(examples) == 1
    with pytest.raises(RecordError, match=r"qa\.csv, line 3: missing or invalid field 'question'"):
        training_examples(str(csv_path), tokenizer)


def test_a_name_that_is_not_a_file_goes_to_the_hub_loader(monkeypatch):
    import datamodules.record_loading as records_module

    calls = []
    monkeypatch.setattr(records_module.datasets, "load_dataset", lambda name, split: calls.append((name, split)))
    load_records("someone/some-sft-data", split="validation")
    assert calls == [("someone/some-sft-data", "validation")]


def test_missing_local_file_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        load_records("nowhere.jsonl")
