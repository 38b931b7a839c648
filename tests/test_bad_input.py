"""Malformed data as users write it: each case is one short message naming the file, the line (or
record) and the field, with exit code 2 and no traceback, before any model work."""

import json
import sys

import pytest

from lightning_app.main import console_main

QA = {"question": "Capital of Italy?", "answer": "Rome"}
CHOICE = {"id": "c1", "type": "choice", "prompt": "Even?", "choices": {"A": "3", "B": "4"}, "answer": "B"}


def jsonl(*records) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records).encode()


def chat(*turns) -> dict:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


# (name, file suffix, file bytes, format, extra flags, expected location, expected words)
CASES = [
    ("broken JSON line", ".jsonl", jsonl(QA, '{"question": "q", "answer": '), "qa", [], "line 2", "invalid JSON"),
    ("not UTF-8", ".jsonl", jsonl(QA) + b'{"question": "caf\xe9", "answer": "x"}\n', "qa", [], "line 2", "not UTF-8"),
    ("empty file", ".jsonl", b"", "qa", [], "whole file", "empty"),
    ("blank lines only", ".jsonl", b"\n\n  \n", "qa", [], "whole file", "empty"),
    ("line holding a list", ".jsonl", jsonl([1, 2]), "qa", [], "line 1", "expected a JSON object"),
    ("JSON list holding a string", ".json", json.dumps([QA, "oops"]).encode(), "qa", [], "record 2",
     "expected a JSON object"),
    ("JSON document that is a number", ".json", b"42", "qa", [], "whole file", "expected a list of records"),
    ("CSV row with too many fields", ".csv", b"question,answer\nq1,a1\nq2,a2,extra\n", "qa", [], "line 3",
     "3 fields where the header has 2"),
    ("text file", ".txt", b"question: q\n", "qa", [], "whole file", "'.txt' files are not read"),
    ("missing question", ".jsonl", jsonl(QA, {"answer": "x"}), "qa", [], "line 2", "field 'question'"),
    ("answer is a number", ".jsonl", jsonl({"question": "q", "answer": 4}), "qa", [], "line 1", "field 'answer'"),
    ("renamed field absent", ".jsonl", jsonl(QA), "qa", ["--data.fields", '{"question": "Q"}'], "line 1",
     "field 'Q'"),
    ("unknown role", ".jsonl", jsonl(chat(("user", "hi"), ("wizard", "poof"))), "messages", [], "line 1",
     "role 'wizard'"),
    ("role typo", ".jsonl", jsonl(chat(("user", "hi"), ("Assistant", "hello"))), "messages", [], "line 1",
     "role 'Assistant'"),
    ("content is a number", ".jsonl", jsonl({"messages": [{"role": "user", "content": 5}]}), "messages", [],
     "line 1", "content must be a string"),
    ("messages not a list", ".jsonl", jsonl({"messages": "hi"}), "messages", [], "line 1", "field 'messages'"),
    ("message without content", ".jsonl", jsonl({"messages": [{"role": "user"}]}), "messages", [], "line 1",
     "needs 'role' and 'content'"),
    ("assistant speaks first", ".jsonl", jsonl(chat(("assistant", "Hi!"), ("user", "hi"))), "messages", [],
     "line 1", "starts with an assistant turn"),
    ("history holds a number", ".jsonl", jsonl({"instruction": "i", "output": "o", "history": [["u", 3]]}),
     "instruction", [], "line 1", "field 'history'"),
    ("history not pairs", ".jsonl", jsonl({"instruction": "i", "output": "o", "history": [["u"]]}),
     "instruction", [], "line 1", "field 'history'"),
    ("missing instruction", ".jsonl", jsonl({"output": "o"}), "instruction", [], "line 1", "field 'instruction'"),
    ("prompt is a number", ".jsonl", jsonl({"prompt": 1, "completion": "c"}), "prompt_completion", [], "line 1",
     "field 'prompt'"),
    ("missing problem", ".jsonl", jsonl({"solution": "s"}), "math", [], "line 1", "field 'problem'"),
    ("final answer is an object", ".jsonl", jsonl({"problem": "p", "solution": "s", "answer": {"x": 1}}), "math",
     [], "line 1", "field 'answer'"),
    ("missing think", ".jsonl", jsonl({"question": "q", "answer": "a"}), "think", [], "line 1", "field 'think'"),
    ("unknown type", ".jsonl", jsonl({**CHOICE, "type": "essay"}), "typed", [], "line 1", "field 'type'"),
    ("option letters with a gap", ".jsonl", jsonl({**CHOICE, "choices": {"A": "3", "C": "4"}, "answer": "A"}),
     "typed", [], "line 1", "without gaps"),
    ("gold letter not an option", ".jsonl", jsonl({**CHOICE, "answer": "E"}), "typed", [], "line 1",
     "the gold letter must be one of"),
    ("choices not an object", ".jsonl", jsonl({**CHOICE, "choices": ["3", "4"]}), "typed", [], "line 1",
     "field 'choices'"),
    ("missing prompt", ".jsonl", jsonl({"id": "g", "type": "generic-generate", "answer": "a"}), "typed", [],
     "line 1", "field 'prompt'"),
    ("duplicate id", ".jsonl", jsonl(CHOICE, CHOICE), "typed", [], "line 2", "id 'c1' appears again"),
    ("id is a list", ".jsonl", jsonl({**QA, "id": [1]}), "qa", [], "line 1", "an id must be"),
    ("no answers to score", ".jsonl", jsonl({"question": "q"}), "qa", [], "line 1", "the reference answer is missing"),
    ("code without its test", ".jsonl", jsonl({"id": "k", "type": "code-generate", "prompt": "def f(): ...",
                                               "answer": "x"}), "typed", [], "line 1", "'test' and 'entry_point'"),
]


@pytest.mark.parametrize("name, suffix, content, record_format, flags, location, words", CASES,
                         ids=[case[0] for case in CASES])
def test_bad_input_is_one_located_message(name, suffix, content, record_format, flags, location, words,
                                          tmp_path, monkeypatch, capsys):
    references = tmp_path / f"data{suffix}"
    references.write_bytes(content)
    answers = tmp_path / "answers.jsonl"
    answers.write_text('{"id": "0", "content": "x"}\n')
    monkeypatch.setattr(sys, "argv", ["sft", "score", "--predictions", str(answers), "--references", str(references),
                                      "--data.format", record_format, "--out", str(tmp_path / "m.json"), *flags])
    with pytest.raises(SystemExit) as stopped:
        console_main()
    assert stopped.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()
    assert len(message) <= 3 and "Traceback" not in "\n".join(message)
    assert message[0].startswith(f"error: {references}, {location}: "), message
    assert words in message[0]
    assert not (tmp_path / "m.json").exists()  # nothing written


def test_there_are_at_least_30_cases():
    assert len(CASES) >= 30


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    references = tmp_path / "data.jsonl"
    references.write_bytes(b"")
    monkeypatch.setattr(sys, "argv", ["sft", "score", "--predictions", str(references), "--references",
                                      str(references), "--debug"])
    with pytest.raises(ValueError, match="the file is empty"):
        console_main()


def sft_errors(argv: list[str], monkeypatch, capsys) -> list[str]:
    """The ``error:`` lines of ``sft ARGV``, which must stop with exit code 2 before any model loads."""
    import modules.sft_module

    monkeypatch.setattr(modules.sft_module, "load_causal_lm", lambda *a, **k: pytest.fail("the model loaded"))
    monkeypatch.setattr(sys, "argv", ["sft", *argv])
    with pytest.raises(SystemExit) as stopped:
        console_main()
    assert stopped.value.code == 2
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]


BAD_ANSWER = ("line 2: missing or invalid field 'answer': expected a non-empty string or a list of acceptable "
              "strings")


def test_a_bad_test_file_stops_sft_test_before_the_model_loads(tiny_model_dir, tmp_path, monkeypatch, capsys):
    test = tmp_path / "test.jsonl"
    test.write_bytes(jsonl(QA, {"question": "q", "answer": ["ok", 2]}))
    errors = sft_errors(["test", "--model.model_name_or_path", str(tiny_model_dir), "--data.format", "qa",
                         "--data.test_path", str(test), "--trainer.logger", "false", "--trainer.accelerator", "cpu"],
                        monkeypatch, capsys)
    assert errors == [f"error: {test}, {BAD_ANSWER}"]


def test_a_fit_reads_only_its_own_files(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """A config's test and predict files (another format) are not read by fit: its own bad file stops it."""
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_bytes(jsonl(QA, {"question": "q", "answer": ["ok", 2]}))
    test.write_bytes(jsonl(CHOICE))  # typed: not a QA record, and not fit's file
    errors = sft_errors(["fit", "--model.model_name_or_path", str(tiny_model_dir), "--data.format", "qa",
                         "--data.train_path", str(train), "--data.test_path", str(test),
                         "--data.predict_path", str(test), "--trainer.logger", "false", "--trainer.accelerator", "cpu"],
                        monkeypatch, capsys)
    assert errors == [f"error: {train}, {BAD_ANSWER}"]


def test_the_demo_checks_its_test_file_before_it_trains(tiny_model_dir, tmp_path, monkeypatch, capsys):
    train, references = tmp_path / "train.jsonl", tmp_path / "references.jsonl"
    train.write_bytes(jsonl(QA))
    references.write_bytes(jsonl(QA, {"question": "q", "answer": ["ok", 2]}))
    errors = sft_errors(["demo", "--model.model_name_or_path", str(tiny_model_dir), "--data.format", "qa",
                         "--data.train_path", str(train), "--references", str(references), "--data.predict_path",
                         str(train), "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
                         "--trainer.accelerator", "cpu"], monkeypatch, capsys)
    assert errors == [f"error: {references}, {BAD_ANSWER}"]
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written


def test_a_max_length_below_a_chat_turn_is_refused(tiny_model_dir, tmp_path, monkeypatch, capsys):
    train = tmp_path / "train.jsonl"
    train.write_bytes(jsonl(QA))
    errors = sft_errors(["fit", "--model.model_name_or_path", str(tiny_model_dir), "--data.format", "qa",
                         "--data.train_path", str(train), "--data.max_length", "0", "--trainer.logger", "false"],
                        monkeypatch, capsys)
    assert errors == ["error: data.max_length must be at least 32 (a chat turn's headers alone take ~10 tokens) or "
                      "null for no cut, got 0"]


def test_a_split_that_keeps_nothing_stops_before_the_model_loads(tiny_model_dir, tmp_path, monkeypatch, capsys):
    train = tmp_path / "train.jsonl"  # every question longer than 40 tokens: cutting the end leaves no answer
    train.write_bytes(jsonl(*[{"question": "why " * 20 + str(i), "answer": "because"} for i in range(3)]))
    errors = sft_errors(["fit", "--model.model_name_or_path", str(tiny_model_dir), "--data.format", "qa",
                         "--data.train_path", str(train), "--data.max_length", "40", "--data.truncation", "keep_start",
                         "--trainer.logger", "false"], monkeypatch, capsys)
    assert errors == [f"error: {train}: the train split keeps none of its 3 records (3 cut at data.max_length 40 "
                      "(data.truncation keep_start), 3 left without a trained token): raise data.max_length, or use "
                      "data.truncation keep_answer (it cuts the prompt, not the answer)"]


def test_a_split_that_drops_more_than_its_share_says_so(tiny_model_dir, tmp_path):
    from datamodules.sft_datamodule import SFTDataModule

    records = [{"question": "why " * 20, "answer": "because"}] + [{"question": "ok?", "answer": "yes"}] * 9
    train = tmp_path / "train.jsonl"
    train.write_bytes(jsonl(*records))
    datamodule = SFTDataModule(train_path=str(train), format="qa", max_length=40, truncation="keep_start",
                               tokenizer_name_or_path=str(tiny_model_dir), cache_tokens=False)
    with pytest.warns(UserWarning, match=r"train.jsonl: the train split drops 1 of 10 records \(1 cut at data.max_length 40"):
        datamodule.setup("fit")
    kept = SFTDataModule(train_path=str(train), format="qa", max_length=40, tokenizer_name_or_path=str(tiny_model_dir),
                         cache_tokens=False)
    kept.setup("fit")  # the default keeps the answer: nothing dropped, nothing said
    assert kept.token_stats["train"].kept == 10
