"""Files in, metrics out: loading both predictions formats, per-type scoring, metrics.json, the table."""

import json
import sys
import types
from pathlib import Path

import pytest

from evaluation.answer_files import write_answers
from datamodules.normalize import ConversationSpec, normalize_records, read_records
from evaluation.scoring import (
    format_metrics_table,
    load_predictions,
    score_files,
    score_records,
)

BUNDLED_TEST = Path(__file__).resolve().parents[1] / "data" / "bundled" / "test.jsonl"

CHOICE = {"id": "c1", "type": "choice", "prompt": "2+2?", "choices": {"A": "3", "B": "4"}, "answer": "B"}
MATH = {"id": "m1", "type": "math", "prompt": "Half of 1?", "answer": "1/2 = 0.5. \\boxed{0.5}", "final_answer": "0.5"}
GENERIC = {"id": "g1", "type": "generic-generate", "prompt": "Plural of mouse?", "answer": "mice"}
CODE = {
    "id": "k1",
    "type": "code-generate",
    "prompt": 'def add(a, b):\n    """Return the sum of a and b."""\n',
    "answer": "```python\ndef add(a, b):\n    return a + b\n```",
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n",
    "entry_point": "add",
}


def records_of(rows: list[dict], record_format: str = "typed") -> list:
    """Rows as the data module reads them (typed unless said otherwise)."""
    return normalize_records(rows, ConversationSpec(record_format), "refs")


def score_answers(predictions: dict, rows: list[dict], record_format: str = "typed", **kwargs) -> dict:
    return score_records(predictions, records_of(rows, record_format), **kwargs)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


class FakeEvaluator:
    """Stands in for code_execution.evaluate_code_samples: records its inputs, returns fixed values."""

    def __init__(self, result: dict):
        self.result = result
        self.calls: list[dict] = []

    def __call__(self, problems, samples, ks=(1, 3), timeout_s=10.0, workers=2):
        self.calls.append({"problems": problems, "samples": samples, "ks": ks})
        return dict(self.result)


@pytest.fixture
def fake_evaluator(monkeypatch):
    evaluator = FakeEvaluator({"pass@1": 0.5, "pass@3": 0.75, "samples": 4, "passed": 2})
    module = types.ModuleType("evaluation.code_execution")
    module.evaluate_code_samples = evaluator
    monkeypatch.setitem(sys.modules, "evaluation.code_execution", module)
    return evaluator


# Loading predictions


def test_both_formats_written_by_predict_load_the_same(tmp_path):
    rows = [
        {"id": "c1", "type": "choice", "content": "B"},
        {"id": "g1", "type": "generic-generate", "content": "老鼠"},
    ]
    json_path = write_answers(rows, tmp_path)
    expected = {"c1": "B", "g1": "老鼠"}
    assert load_predictions(str(json_path)) == expected
    assert load_predictions(str(tmp_path / "predictions.jsonl")) == expected


def test_code_samples_list_is_kept(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "k1", "content": ["def a(): pass", "def b(): pass"]}])
    assert load_predictions(str(path)) == {"k1": ["def a(): pass", "def b(): pass"]}


@pytest.mark.parametrize(
    "lines, located, field",
    [
        (['{"id": "a", "content": "x"}', "", '{"id": "b", "content": '], "line 3", "invalid JSON"),
        (['{"id": "a", "content": "x"}', '{"id": "b"}'], "line 2", "'content'"),
        (['{"content": "x"}'], "line 1", "'id'"),
        (['{"id": "a", "content": 3}'], "line 1", "'content'"),
    ],
)
def test_jsonl_prediction_errors_name_file_line_and_field(tmp_path, lines, located, field):
    path = tmp_path / "predictions.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError) as error:
        load_predictions(str(path))
    assert str(path) in str(error.value) and located in str(error.value) and field in str(error.value)


def test_duplicate_prediction_ids_are_refused(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "content": "1"}, {"id": "b", "content": "2"},
                                              {"id": "a", "content": "3"}])
    with pytest.raises(ValueError, match=r"line 3: id 'a' appears again \(first at line 1\)"):
        load_predictions(str(path))


def test_seed_format_errors_name_the_entry(tmp_path):
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps({"result": {"results": [{"id": "a", "content": "x"}, {"content": "y"}]}}))
    with pytest.raises(ValueError, match=r"predictions.json, result.results\[1\]: field 'id'"):
        load_predictions(str(path))


def test_broken_seed_json_names_the_line(tmp_path):
    path = tmp_path / "predictions.json"
    path.write_text('{"result": {"results": [\n  {"id": "a", "content": "x"},\n  {"id": \n]}}\n')
    with pytest.raises(ValueError, match=r"predictions.json, line 4: invalid JSON"):
        load_predictions(str(path))


# Records to score against


def test_bundled_test_file_loads():
    references = read_records(str(BUNDLED_TEST), ConversationSpec("typed"))
    assert len(references) == 40
    assert {record.type for record in references} == {"choice", "code-generate", "generic-generate", "math"}
    assert all(record.labelled for record in references)


@pytest.mark.parametrize(
    "bad_record, field",
    [
        ({**CHOICE, "id": "c2", "answer": "E"}, "field 'answer': the gold letter must be one of ['A', 'B'], got 'E'"),
        ({**GENERIC, "type": "essay"}, "field 'type'"),
    ],
)
def test_reference_errors_name_file_line_and_field(tmp_path, bad_record, field):
    path = write_jsonl(tmp_path / "refs.jsonl", [CHOICE, bad_record])
    with pytest.raises(ValueError) as error:
        read_records(str(path), ConversationSpec("typed"))
    assert f"{path}, line 2: missing or invalid {field}" in str(error.value)


def test_qa_answers_must_be_text(tmp_path):
    path = write_jsonl(tmp_path / "refs.jsonl", [{"question": "Capital of France?", "answer": [1]}])
    with pytest.raises(ValueError, match=r"refs.jsonl, line 1: missing or invalid field 'answer'"):
        read_records(str(path), ConversationSpec("qa"))


def test_an_unlabelled_record_cannot_be_scored():
    unlabelled = {key: value for key, value in GENERIC.items() if key != "answer"}
    with pytest.raises(ValueError, match=r"refs, record 2: the reference answer is missing \(id 'g1'"):
        score_answers({}, [CHOICE, unlabelled])
    with pytest.raises(ValueError, match=r"refs, record 1: fields 'test' and 'entry_point' are needed"):
        score_answers({}, [{**CODE, "test": ""}])


def test_duplicate_reference_ids_are_refused(tmp_path):
    path = write_jsonl(tmp_path / "refs.jsonl", [CHOICE, CHOICE])
    with pytest.raises(ValueError, match=r"line 2: id 'c1' appears again \(first at line 1\)"):
        read_records(str(path), ConversationSpec("typed"))


# Scoring


def test_missing_predictions_are_wrong_and_listed():
    choices = [{**CHOICE, "id": f"c{index}"} for index in range(4)]
    metrics = score_answers({"c0": "B", "c1": "The answer is B", "c2": "A"}, choices)
    assert metrics["choice"] == {"accuracy": 0.5, "count": 4}
    assert metrics["missing_predictions"] == ["c3"]
    assert metrics["overall"] == {"score": 0.5, "types": ["choice"], "primary": {"choice": "accuracy"}}


def test_qa_records_use_squad_with_every_acceptable_answer():
    references = [
        {"id": "q1", "question": "What is in Paris?", "answer": ["Eiffel Tower", "the tower"]},
        {"id": "q2", "question": "Capital of France?", "answer": "paris"},
    ]
    metrics = score_answers({"q1": "Eiffel Tower in Paris", "q2": "Paris."}, references, "qa")
    assert metrics["qa"] == pytest.approx({"exact_match": 0.5, "f1": (2 / 3 + 1) / 2, "count": 2}, abs=1e-6)
    assert metrics["overall"]["score"] == pytest.approx((2 / 3 + 1) / 2, abs=1e-6)


def test_pass_at_k_wiring(fake_evaluator):
    references = [CODE, {**CODE, "id": "k2"}, {**CODE, "id": "k3"}]
    predictions = {"k1": "```python\ndef add(a, b):\n    return a + b\n```", "k2": ["s1", "s2"]}
    metrics = score_answers(predictions, references, code_ks=(1, 3))
    (call,) = fake_evaluator.calls
    assert call["samples"] == [[predictions["k1"]], ["s1", "s2"]]  # fences are code_execution's to remove
    assert call["problems"] == [{"prompt": CODE["prompt"], "test": CODE["test"], "entry_point": "add"}] * 2
    assert call["ks"] == (1, 3)
    # k3 has no answer and is not run: it adds a 0, so the evaluator's means are scaled by 2/3.
    code = metrics["code-generate"]
    assert code["pass@1"] == pytest.approx(0.5 * 2 / 3) and code["pass@3"] == pytest.approx(0.75 * 2 / 3)
    assert code["count"] == 3 and metrics["missing_predictions"] == ["k3"]


def test_pass_at_1_is_always_asked_for(fake_evaluator):
    score_answers({"k1": "x"}, [CODE], code_ks=(3,))
    assert fake_evaluator.calls[0]["ks"] == (1, 3)


def test_code_without_any_answer_runs_nothing(fake_evaluator):
    metrics = score_answers({}, [CODE], code_ks=(1, 3))
    assert fake_evaluator.calls == []
    assert metrics["code-generate"] == {"pass@1": 0.0, "pass@3": 0.0, "count": 1}


def test_real_code_execution_if_available():
    pytest.importorskip("evaluation.code_execution")
    right = "```python\ndef add(a, b):\n    return a + b\n```"
    wrong = "def add(a, b):\n    return a - b\n"
    metrics = score_answers({"k1": [right, wrong]}, [CODE], code_ks=(1,))
    assert metrics["code-generate"]["pass@1"] == pytest.approx(0.5)


def test_real_code_execution_passes_the_bundled_gold_answers():
    pytest.importorskip("evaluation.code_execution")
    references = [record for record in read_records(str(BUNDLED_TEST), ConversationSpec("typed"))
                  if record.type == "code-generate"]
    metrics = score_records({record.id: record.reference.answers[0] for record in references}, references,
                            code_ks=(1,))
    assert metrics["code-generate"]["pass@1"] == 1.0 and metrics["code-generate"]["count"] == 10


# Files out


def test_score_files_end_to_end(tmp_path, fake_evaluator):
    fake_evaluator.result = {"pass@1": 1.0, "pass@3": 1.0}
    references = write_jsonl(tmp_path / "refs.jsonl", [CHOICE, MATH, GENERIC, CODE])
    run_dir = tmp_path / "run"
    predictions = write_answers(
        [
            {"id": "c1", "type": "choice", "content": "答案：B"},
            {"id": "m1", "type": "math", "content": "One half: \\boxed{\\frac{1}{2}}"},
            {"id": "g1", "type": "generic-generate", "content": "The mice."},
            {"id": "k1", "type": "code-generate", "content": CODE["answer"]},
        ],
        run_dir,
    )
    metrics, metrics_path = score_files(str(predictions), read_records(str(references), ConversationSpec("typed")))
    # "the mice" vs "mice": ROUGE-1 and -L precision 1/2, recall 1 → 2/3; no shared bigram; not an exact match.
    assert metrics["generic-generate"] == pytest.approx(
        {"rouge1": 2 / 3, "rouge2": 0.0, "rougeL": 2 / 3, "exact_match": 0.0, "count": 1}, abs=1e-6
    )
    assert metrics["choice"] == {"accuracy": 1.0, "count": 1}
    assert metrics["math"] == {"accuracy": 1.0, "count": 1}
    assert metrics["code-generate"] == {"pass@1": 1.0, "pass@3": 1.0, "count": 1}
    assert metrics["overall"]["score"] == pytest.approx((1 + 1 + 2 / 3 + 1) / 4, abs=1e-6)
    assert metrics["overall"]["types"] == ["choice", "math", "generic-generate", "code-generate"]
    assert metrics["missing_predictions"] == []
    assert metrics_path == run_dir / "metrics.json"
    assert json.loads(metrics_path.read_text(encoding="utf-8")) == metrics
    assert sorted(path.name for path in run_dir.iterdir()) == ["metrics.json", "predictions.json", "predictions.jsonl"]


def test_score_files_output_path(tmp_path):
    references = write_jsonl(tmp_path / "refs.jsonl", [CHOICE])
    predictions = write_jsonl(tmp_path / "p.jsonl", [{"id": "c1", "content": "A"}])
    metrics, metrics_path = score_files(str(predictions), read_records(str(references), ConversationSpec("typed")),
                                        str(tmp_path / "out" / "m.json"))
    assert metrics_path == tmp_path / "out" / "m.json"
    assert json.loads(metrics_path.read_text())["choice"] == {"accuracy": 0.0, "count": 1}


def test_metrics_table():
    metrics = score_answers({"c1": "B", "g1": "mice"}, [CHOICE, GENERIC, {**GENERIC, "id": "g2"}])
    table = format_metrics_table(metrics)
    lines = table.splitlines()
    assert lines[:2] == ["| type | count | metrics |", "|---|---|---|"]
    assert lines[2] == "| choice | 1 | accuracy 1.000 |"
    assert lines[3] == "| generic-generate | 2 | rougeL 0.500, rouge1 0.500, rouge2 0.000, exact_match 0.500 |"
    assert lines[4] == "| overall | 3 | score 0.750 (mean of primary metrics) |"
    assert "1 reference(s) had no prediction and were scored wrong: g2" in table
