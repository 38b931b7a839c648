"""Scoring answers against ``Record``s: answers in, ``metrics.json`` out.

Records come from any data format (``datamodules/normalize.py``); each record's ``metric`` (by
default from its type, ``--data.metric`` overrides) picks how its answer is read and scored. All
metrics are floats in [0, 1]:

- ``choice``: ``accuracy`` of the letter pulled out of the reply (``extract_choice_letter``).
- ``math``: ``accuracy``, final answers equivalent under ``math_verify`` (the file's final answer,
  else the last ``\\boxed{}`` of its solution).
- ``rouge`` (``generic-generate``: typed generic records, instruction, prompt/completion and
  messages files): ROUGE-1/2/L F-measure (CJK characters as tokens) and ``exact_match``.
- ``think``: the same on the text after ``</think>``, plus ``think_closed``, the share of replies
  that closed their think block.
- ``code``: ``pass@k`` for each k (pass@1 always; a k above a problem's sample count is left
  out), by running the samples against the tests; plus ``samples`` and ``passed`` totals.
- ``squad`` (``qa``): SQuAD ``exact_match`` and ``f1``, best over the acceptable answers.
- ``overall``: ``score`` is the unweighted mean over the types present of each type's primary
  metric (``PRIMARY_METRICS``, named per type under ``primary``), so a type with 10 records weighs
  as much as one with 1000.

A record without a prediction is scored as an empty answer (wrong) and listed under
``missing_predictions``; predictions whose id is in no record are ignored.
"""

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from core.errors import RecordError
from core.files import write_text_atomically
from core.record import QUESTION_TYPES, Record
from core.tables import markdown_table
from evaluation.answer_extraction import extract_choice_letter, extract_code_samples, extract_final_math_answer, split_think
from evaluation.metrics import (
    choice_accuracy,
    code_pass_at_k,
    exact_match,
    math_accuracy,
    mean_of,
    rouge_scores,
    squad_scores,
)

# The order types are listed in tables and metrics.json.
TYPE_ORDER = ("choice", "math", "generic-generate", "code-generate", "qa", "think")
assert set(TYPE_ORDER) == set(QUESTION_TYPES)
PRIMARY_METRICS = {  # per metric: the number a type's row is ranked and averaged by
    "choice": "accuracy",
    "math": "accuracy",
    "rouge": "rougeL",
    "code": "pass@1",
    "squad": "f1",
    "think": "rougeL",
}
Content = str | list[str]


# 1. Reading predictions: the seed project's predictions.json, or JSON Lines with id and content.


def _jsonl_objects(path: Path) -> list[tuple[str, Any]]:
    """(location, parsed object) for each non-blank line, or a RecordError naming the bad line."""
    rows = []
    with path.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rows.append((f"line {line_number}", json.loads(line)))
            except json.JSONDecodeError as error:
                raise RecordError(str(path), f"line {line_number}", f"invalid JSON ({error.msg})") from error
    return rows


def _seed_format_rows(path: Path, document: dict) -> list[tuple[str, Any]]:
    results = document.get("result", {}).get("results") if isinstance(document.get("result"), dict) else None
    if not isinstance(results, list):
        raise RecordError(str(path), "field 'result'", 'expected {"result": {"results": [{"id", "content"}, ...]}}')
    return [(f"result.results[{index}]", row) for index, row in enumerate(results)]


def _prediction_rows(path: Path) -> list[tuple[str, Any]]:
    """Tell the two formats apart by content: one JSON document with "result", or one object a line."""
    text = path.read_text(encoding="utf-8")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        if path.suffix.lower() == ".json":
            raise RecordError(str(path), f"line {error.lineno}", f"invalid JSON ({error.msg})") from error
        return _jsonl_objects(path)
    if isinstance(document, dict) and "result" in document:
        return _seed_format_rows(path, document)
    return _jsonl_objects(path)


def _check_content(content: Any, source: str, location: str) -> Content:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and all(isinstance(sample, str) for sample in content):
        return content
    raise RecordError(source, location, "field 'content' must be a string or a non-empty list of strings")


def _record_id(row: Any, source: str, location: str) -> str:
    """The id as a string, so ``7`` in one file matches ``"7"`` in the other."""
    if not isinstance(row, dict):
        raise RecordError(source, location, "expected a JSON object")
    record_id = row.get("id")
    if isinstance(record_id, bool) or not isinstance(record_id, (str, int)) or record_id == "":
        raise RecordError(source, location, "field 'id' is missing or not a string")
    return str(record_id)


def load_predictions(path: str) -> dict[str, Content]:
    """id → content (a string, or a list of samples for code) from either predictions format."""
    source, predictions, first_seen = str(path), {}, {}
    for location, row in _prediction_rows(Path(path)):
        record_id = _record_id(row, source, location)
        if "content" not in row:
            raise RecordError(source, location, f"field 'content' is missing (id '{record_id}')")
        if record_id in predictions:
            raise RecordError(source, location, f"id '{record_id}' appears again (first at {first_seen[record_id]})")
        predictions[record_id] = _check_content(row["content"], source, location)
        first_seen[record_id] = location
    return predictions


# 2. Which records can be scored: sft test checks this before any model work.


def _missing_reference(record: Record) -> str | None:
    """What a record lacks to be scored by its metric, or None."""
    reference = record.reference
    if record.metric == "code":
        return None if reference.code else "fields 'test' and 'entry_point' are needed: code is scored by running the test"
    if record.metric == "choice":
        return None if reference.gold_letter else "field 'answer' (the gold letter) is missing"
    if record.metric == "math":
        return None if reference.final_answer or reference.answers else "the reference answer is missing"
    return None if reference.answers else "the reference answer is missing"


def check_scorable(records: list[Record]) -> None:
    """Every record has what its metric compares with; the first that does not is a located error."""
    for record in records:
        problem = _missing_reference(record)
        if problem:
            raise RecordError(record.source, record.location,
                              f"{problem} (id '{record.id}', scored by '{record.metric}'): scoring needs a labelled file")


# 3. Scoring, one function per metric: (records, contents) -> metrics.


def _first_text(content: Content) -> str:
    """The answer text; for a list of samples outside code, the first sample (as pass@1 would)."""
    return content if isinstance(content, str) else content[0]


def _score_choice(records: list[Record], contents: list[Content]) -> dict:
    letters = [extract_choice_letter(_first_text(c), set(r.reference.choices)) for r, c in zip(records, contents)]
    return {"accuracy": choice_accuracy(letters, [r.reference.gold_letter for r in records])}


def _math_reference_answer(record: Record) -> str:
    """The file's final answer as written (it is the answer, not text to search), else the solution's box."""
    if record.reference.final_answer is not None:
        return record.reference.final_answer
    return extract_final_math_answer(record.reference.answers[0])


def _score_math(records: list[Record], contents: list[Content]) -> dict:
    predicted = [extract_final_math_answer(_first_text(content)) for content in contents]
    return {"accuracy": math_accuracy(predicted, [_math_reference_answer(r) for r in records])}


def _score_rouge(records: list[Record], contents: list[Content]) -> dict:
    predictions, answers = [_first_text(c) for c in contents], [r.reference.answers[0] for r in records]
    return {**rouge_scores(predictions, answers), "exact_match": exact_match(predictions, answers)}


def _score_think(records: list[Record], contents: list[Content]) -> dict:
    """ROUGE and exact match of the text after ``</think>``, and how many replies closed their think block."""
    replies = [split_think(_first_text(content)) for content in contents]
    answers = [r.reference.answers[0] for r in records]
    final_texts = [final for final, _ in replies]
    return {**rouge_scores(final_texts, answers), "exact_match": exact_match(final_texts, answers),
            "think_closed": mean_of([float(closed) for _, closed in replies])}


def _score_squad(records: list[Record], contents: list[Content]) -> dict:
    return squad_scores([_first_text(content) for content in contents], [list(r.reference.answers) for r in records])


def _score_code(records: list[Record], contents: list[Content | None], ks: Sequence[int]) -> dict:
    """pass@k over all problems; one without samples adds 0 and is not run.

    The evaluator averages over the problems it ran, so its pass@k is scaled by ran / all: the
    same as averaging with a 0 for each problem without an answer. pass@1 is always asked for (it
    is the primary metric); the evaluator leaves out a k larger than the fewest samples a problem has.
    """
    ks = tuple(sorted(set(ks) | {1}))
    answered = [(r, c) for r, c in zip(records, contents) if c is not None]
    if not answered:
        return {f"pass@{k}": 0.0 for k in ks}
    problems = [asdict(r.reference.code) for r, _ in answered]
    results = code_pass_at_k(problems, [extract_code_samples(c) for _, c in answered], ks)
    answered_share = len(answered) / len(records)
    # The evaluator's totals ("samples", "passed") come as floats; they are counts.
    return {key: value * answered_share if key.startswith("pass@") else int(value) for key, value in results.items()}


SCORERS: dict[str, Callable[[list[Record], list[Content]], dict]] = {
    "choice": _score_choice,
    "math": _score_math,
    "rouge": _score_rouge,
    "squad": _score_squad,
    "think": _score_think,
}


def _overall(metrics: dict, primary: dict[str, str]) -> dict:
    types = [question_type for question_type in TYPE_ORDER if question_type in metrics]
    primary_scores = [metrics[question_type][primary[question_type]] for question_type in types]
    return {"score": round(sum(primary_scores) / len(primary_scores), 6), "types": types,
            "primary": {question_type: primary[question_type] for question_type in types}}


def _score_group(records: list[Record], predictions: dict[str, Content], code_ks) -> dict:
    contents = [predictions.get(record.id) for record in records]
    metric = records[0].metric
    if metric == "code":
        return _score_code(records, contents, code_ks)
    return SCORERS[metric](records, ["" if content is None else content for content in contents])


def score_records(predictions: dict[str, Content], records: list[Record], code_ks=(1, 3)) -> dict:
    """Metrics per question type present, ``overall`` and ``missing_predictions`` (see module docstring)."""
    if not records:
        raise ValueError("no records to score against")
    check_scorable(records)
    by_type: dict[str, list[Record]] = {}
    for record in records:
        by_type.setdefault(record.type, []).append(record)
    metrics: dict[str, Any] = {}
    primary: dict[str, str] = {}
    for question_type in TYPE_ORDER:
        typed_records = by_type.get(question_type)
        if typed_records:
            metrics[question_type] = {**_score_group(typed_records, predictions, code_ks), "count": len(typed_records)}
            primary[question_type] = PRIMARY_METRICS[typed_records[0].metric]
    metrics["overall"] = _overall(metrics, primary)
    metrics["missing_predictions"] = [record.id for record in records if record.id not in predictions]
    return metrics


# 4. Files out, and a table for people.


def numeric_items(metrics: dict):
    """(``type/metric``, value) for every number in the nested metrics."""
    for group, values in metrics.items():
        if isinstance(values, dict):
            for name, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    yield f"{group}/{name}", float(value)


def write_metrics(metrics: dict, path: Path) -> Path:
    """Write metrics as JSON, never half a file."""
    return write_text_atomically(path, json.dumps(metrics, ensure_ascii=False, indent=2) + "\n")


def score_files(predictions_path: str, records: list[Record], output_path: str | None = None) -> tuple[dict, Path]:
    """Score an answers file against records and write the metrics (default: ``metrics.json`` beside it)."""
    metrics = score_records(load_predictions(predictions_path), records)
    metrics_path = Path(output_path) if output_path else Path(predictions_path).parent / "metrics.json"
    return metrics, write_metrics(metrics, metrics_path)


def _metric_cells(scores: dict, primary: str) -> str:
    named = [f"{primary} {scores[primary]:.3f}"] + [
        f"{name} {value:.3f}" if isinstance(value, float) else f"{name} {value}"
        for name, value in scores.items()
        if name not in (primary, "count")
    ]
    return ", ".join(named)


def format_metrics_table(metrics: dict) -> str:
    """A Markdown table: one row per type (primary metric first), then the overall row."""
    types = metrics["overall"]["types"]
    primary = metrics["overall"]["primary"]
    rows = [[question_type, str(metrics[question_type]["count"]),
             _metric_cells(metrics[question_type], primary[question_type])] for question_type in types]
    total = sum(metrics[question_type]["count"] for question_type in types)
    rows.append(["overall", str(total), f"score {metrics['overall']['score']:.3f} (mean of primary metrics)"])
    table = markdown_table(["type", "count", "metrics"], rows)
    missing = metrics.get("missing_predictions", [])
    if missing:
        listed = ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else "")
        table += f"\n\n{len(missing)} reference(s) had no prediction and were scored wrong: {listed}"
    return table
