"""`sft test` and `sft score` on a small file of each of the eight formats, in its users' layouts
(configs/scenarios/): no ids in the QA list, Math500's unique_id, Alpaca history, think traces.

Each format is scored by the metric that fits it; answers are keyed by the file's own id or the
record's position. `sft score` with hand-written answers pins the values each metric must give.
"""

import json
from pathlib import Path

import pytest
import yaml

from lightning_app.main import main

QA_LIST = [  # the QA user's JSON list: no ids, one record with SQuAD context and several answers
    {"context": "The tower stands in Paris.", "question": "Where is the tower?", "answer": ["Paris", "in Paris"]},
    {"question": "Capital of Italy?", "answer": "Rome"},
]
MATH500 = [
    {"problem": "What is 1+1?", "solution": "1+1 = 2, so \\boxed{2}.", "answer": "2", "unique_id": "test/a/1.json"},
    {"problem": "Half of 1?", "solution": "\\boxed{\\frac{1}{2}}", "answer": "\\frac{1}{2}", "unique_id": "test/a/2.json"},
]
INSTRUCTION = [
    {"instruction": "Reverse the word", "input": "ab", "output": "ba", "history": [["Hi", "Hello!"]]},
    {"instruction": "Say yes", "input": "", "output": "yes", "history": []},
]
THINK = [
    {"question": "Is water wet?", "think": "Water makes things wet.", "answer": "Yes."},
    {"question": "Is fire cold?", "think": "Fire is hot.", "answer": "No."},
]
MESSAGES = [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": "4"}]},
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                  {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye"}]},
]
PROMPT_COMPLETION = [{"prompt": "Colour of the sky?", "completion": "blue"}, {"prompt": "1+2?", "completion": "3"}]
SHAREGPT = [
    {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
    {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                       {"from": "gpt", "value": "Hello"}]},
]
TYPED = [
    {"id": "c1", "type": "choice", "prompt": "Even?", "choices": {"A": "3", "B": "4"}, "answer": "B"},
    {"id": "g1", "type": "generic-generate", "prompt": "Plural of mouse?", "answer": "mice"},
]

# format -> (records, file name, whether the file is a JSON list, expected metrics type -> metric names)
FORMATS = {
    "qa": (QA_LIST, "qa.json", True, {"qa": {"exact_match", "f1"}}),
    "math": (MATH500, "math500.jsonl", False, {"math": {"accuracy"}}),
    "instruction": (INSTRUCTION, "alpaca.json", True, {"generic-generate": {"rouge1", "rouge2", "rougeL", "exact_match"}}),
    "think": (THINK, "think.jsonl", False, {"think": {"rouge1", "rouge2", "rougeL", "exact_match", "think_closed"}}),
    "messages": (MESSAGES, "chat.jsonl", False, {"generic-generate": {"rouge1", "rouge2", "rougeL", "exact_match"}}),
    "prompt_completion": (PROMPT_COMPLETION, "pc.jsonl", False,
                          {"generic-generate": {"rouge1", "rouge2", "rougeL", "exact_match"}}),
    "sharegpt": (SHAREGPT, "sharegpt.json", True, {"generic-generate": {"rouge1", "rouge2", "rougeL", "exact_match"}}),
    "typed": (TYPED, "typed.jsonl", False, {"choice": {"accuracy"}, "generic-generate": {"rouge1", "exact_match"}}),
}
EXPECTED_IDS = {
    "qa": ["0", "1"], "math": ["test/a/1.json", "test/a/2.json"], "instruction": ["0", "1"], "think": ["0", "1"],
    "messages": ["0", "1"], "prompt_completion": ["0", "1"], "sharegpt": ["0", "1"], "typed": ["c1", "g1"],
}


def write_records(path: Path, records: list[dict], as_list: bool) -> str:
    if as_list:
        path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return str(path)


def write_test_config(tmp_path: Path, model_dir: Path, record_format: str) -> str:
    records, name, as_list, _ = FORMATS[record_format]
    config = {
        "seed_everything": 1,
        "trainer": {"accelerator": "cpu", "enable_progress_bar": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": str(tmp_path / "runs"), "name": record_format}}},
        # one row decoding at a time: the other prompt joins when the first answer ends (continuous batching)
        "model": {"model_name_or_path": str(model_dir), "generation": {"max_new_tokens": 3}, "answer_rows": 1},
        "data": {"test_path": write_records(tmp_path / name, records, as_list), "format": record_format,
                 "eval_batch_size": 2},
    }
    path = tmp_path / f"{record_format}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize("record_format", list(FORMATS))
def test_sft_test_scores_each_format_with_its_metric(record_format, tiny_model_dir, tmp_path):
    main(["test", "--config", write_test_config(tmp_path, tiny_model_dir, record_format)])
    run_dir = tmp_path / "runs" / record_format / "test"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    expected = FORMATS[record_format][3]
    assert metrics["overall"]["types"] == [t for t in metrics["overall"]["types"] if t in expected]
    assert set(metrics["overall"]["types"]) == set(expected)
    for question_type, names in expected.items():
        assert names <= set(metrics[question_type]), (question_type, metrics[question_type])
    assert sum(metrics[t]["count"] for t in expected) == len(FORMATS[record_format][0])
    assert metrics["missing_predictions"] == []
    answers = json.loads((run_dir / "test_answers" / "predictions.json").read_text())["result"]["results"]
    assert [row["id"] for row in answers] == EXPECTED_IDS[record_format]


def score(tmp_path: Path, record_format: str, contents: list, *extra: str) -> dict:
    """`sft score` of hand-written answers (in the file's order) against a file of ``record_format``."""
    records, name, as_list, _ = FORMATS[record_format]
    references = write_records(tmp_path / name, records, as_list)
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"id": record_id, "content": content}) + "\n"
                               for record_id, content in zip(EXPECTED_IDS[record_format], contents)))
    out = tmp_path / "metrics.json"
    main(["score", "--predictions", str(answers), "--references", references, "--data.format", record_format,
          "--out", str(out), *extra])
    return json.loads(out.read_text())


def test_score_qa_list_without_ids_uses_squad_over_every_acceptable_answer(tmp_path):
    metrics = score(tmp_path, "qa", ["in Paris", "Milan"])
    assert metrics["qa"] == {"exact_match": 0.5, "f1": 0.5, "count": 2}


def test_score_math500_compares_the_final_answer_not_the_solution(tmp_path):
    metrics = score(tmp_path, "math", ["so \\boxed{2}", "it is 0.5"])  # 0.5 = \frac{1}{2}
    assert metrics["math"] == {"accuracy": 1.0, "count": 2}
    assert metrics["overall"]["primary"] == {"math": "accuracy"}


def test_score_think_reads_the_answer_after_the_think_block(tmp_path):
    metrics = score(tmp_path, "think", ["<think>\nwet\n</think>\n\nYes.", "<think>\nhot, so"])
    assert metrics["think"]["exact_match"] == 0.5  # the unclosed second reply has no answer
    assert metrics["think"]["think_closed"] == 0.5
    assert metrics["think"]["rougeL"] == 0.5


def test_score_messages_compares_the_last_assistant_turn(tmp_path):
    metrics = score(tmp_path, "messages", ["4", "Hello"])  # the second conversation's last answer is "Goodbye"
    assert metrics["generic-generate"]["exact_match"] == 0.5


def test_score_sharegpt_with_custom_speaker_names(tmp_path):
    renamed = [{"conversations": [{"from": "asker", "value": "2+2?"}, {"from": "bot", "value": "4"}]}]
    references = write_records(tmp_path / "custom.jsonl", renamed, False)
    answers = tmp_path / "answers.jsonl"
    answers.write_text('{"id": "0", "content": "4"}\n')
    out = tmp_path / "metrics.json"
    main(["score", "--predictions", str(answers), "--references", references, "--data.format", "sharegpt",
          "--data.roles", '{"asker": "user", "bot": "assistant"}', "--out", str(out)])
    assert json.loads(out.read_text())["generic-generate"]["exact_match"] == 1.0


def test_score_metric_override_and_renames_from_a_config(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"format": "prompt_completion", "metric": "squad",
                                               "fields": {"completion": "Reply"}}}))
    renamed = [{"prompt": r["prompt"], "Reply": r["completion"]} for r in PROMPT_COMPLETION]
    references = write_records(tmp_path / "renamed.jsonl", renamed, False)
    answers = tmp_path / "answers.jsonl"
    answers.write_text('{"id": "0", "content": "Blue."}\n{"id": "1", "content": "4"}\n')
    out = tmp_path / "metrics.json"
    main(["score", "--predictions", str(answers), "--references", references, "--config", str(config),
          "--out", str(out)])
    metrics = json.loads(out.read_text())
    assert metrics["generic-generate"] == {"exact_match": 0.5, "f1": 0.5, "count": 2}
    assert metrics["overall"]["primary"] == {"generic-generate": "f1"}


def test_sft_test_on_an_unlabelled_file_stops_before_the_model_loads(tiny_model_dir, tmp_path, monkeypatch):
    import modules.sft_module

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not load for a file that cannot be scored")

    monkeypatch.setattr(modules.sft_module, "load_causal_lm", no_model)
    config = write_test_config(tmp_path, tiny_model_dir, "qa")
    unlabelled = write_records(tmp_path / "unlabelled.json", [{"question": "Capital of Italy?"}], True)
    with pytest.raises(ValueError, match=r"unlabelled.json, record 1: no answer to train on"):
        main(["test", "--config", config, "--data.test_path", unlabelled])


@pytest.mark.parametrize("record_format, monitor", [("qa", "val/qa/f1"), ("math", "val/math/accuracy")])
def test_fit_keeps_the_best_checkpoint_by_the_formats_metric(record_format, monitor, tiny_model_dir, tmp_path):
    """The QA user keeps the best checkpoint by SQuAD F1, the maths user by boxed-answer accuracy."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_app.cli import SFTCLI

    records, name, as_list, _ = FORMATS[record_format]
    data = write_records(tmp_path / name, records, as_list)
    cli = SFTCLI(args=["fit", "--config", write_test_config(tmp_path, tiny_model_dir, record_format),
                       "--data.train_path", data, "--data.val_path", data, "--data.batch_size", "1",
                       "--trainer.max_steps", "2", "--trainer.val_check_interval", "1", "--trainer.precision", "32-true",
                       "--val_answers.num_records", "2", "--checkpoint.monitor", monitor, "--checkpoint.mode", "max",
                       "--merge.enabled", "false"])
    events = EventAccumulator(str(tmp_path / "runs" / record_format / "fit")).Reload()
    scores = events.Scalars(monitor)
    assert len(scores) == 2 and all(0.0 <= point.value <= 1.0 for point in scores)
    assert float(cli.trainer.checkpoint_callback.best_model_score) == max(point.value for point in scores)
