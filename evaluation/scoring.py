"""Scoring a predictions file against a references file: files in, ``metrics.json`` out.

Each reference's ``type`` picks how its prediction is read and scored (records without a
``type`` are plain SQuAD-style ``qa``). All metrics are floats in [0, 1]:

- ``choice``: ``accuracy`` of the letter pulled out of the reply (``extract_choice_letter``).
- ``math``: ``accuracy``, final answers equivalent under ``math_verify``.
- ``generic-generate``: ROUGE-1/2/L F-measure (CJK characters as tokens) and ``exact_match``.
- ``code-generate``: ``pass@k`` for each k (pass@1 always; a k above a problem's sample count is
  left out), by running the samples against the tests; plus ``samples`` and ``passed`` totals.
- ``qa``: SQuAD ``exact_match`` and ``f1``, best over the acceptable answers.
- ``overall``: ``score`` is the unweighted mean over the types present of each type's primary
  metric (``PRIMARY_METRICS``), so a type with 10 records weighs as much as one with 1000.

A reference without a prediction is scored as an empty answer (wrong) and listed under
``missing_predictions``; predictions whose id is in no reference are ignored.
"""

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core.errors import RecordError
from core.files import write_text_atomically
from core.tables import markdown_table
from evaluation.answers import extract_choice_letter, extract_code_samples, extract_final_math_answer
from evaluation.metrics import (
    choice_accuracy,
    code_pass_at_k,
    exact_match,
    math_accuracy,
    rouge_scores,
    squad_scores,
)

QUESTION_TYPES = ("choice", "math", "generic-generate", "code-generate", "qa")
PRIMARY_METRICS = {
    "choice": "accuracy",
    "math": "accuracy",
    "generic-generate": "rougeL",
    "code-generate": "pass@1",
    "qa": "f1",
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


# 2. Reading references: typed records, or plain qa records (no "type").


def reference_type(reference: dict) -> str:
    """The question type that decides scoring; a record without ``type`` is SQuAD-style ``qa``."""
    return reference.get("type") or "qa"


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _reference_problem(reference: dict) -> str | None:
    """What is wrong with one reference record, or None; the caller adds file and line."""
    question_type = reference_type(reference)
    if question_type not in QUESTION_TYPES:
        return f"field 'type' is '{question_type}', expected one of {', '.join(QUESTION_TYPES)}"
    if question_type == "code-generate":
        missing = [field for field in ("prompt", "test", "entry_point") if not _is_text(reference.get(field))]
        return f"field '{missing[0]}' is missing or empty: code is scored by running the test" if missing else None
    if reference.get("answer") in (None, "", []) and not _has_final_answer(reference):
        return "field 'answer' is missing: a references file needs the answers (an unlabeled file has none)"
    if question_type == "choice":
        choices = reference.get("choices")
        if not isinstance(choices, dict) or not choices:
            return "field 'choices' must be an object like {\"A\": \"...\", \"B\": \"...\"}"
        if reference.get("answer") not in choices:
            return f"field 'answer' is {reference.get('answer')!r}, not one of the option letters {sorted(choices)}"
    elif question_type == "math":
        if not _has_final_answer(reference) and not _is_text(reference.get("answer")):
            return "field 'answer' must be a worked solution ending in \\boxed{...} (or give 'final_answer')"
    elif question_type == "generic-generate" and not _is_text(reference.get("answer")):
        return "field 'answer' must be a string"
    elif question_type == "qa" and not _is_acceptable_answer(reference.get("answer")):
        return "field 'answer' must be a string or a list of acceptable strings"
    return None


def _has_final_answer(reference: dict) -> bool:
    final_answer = reference.get("final_answer")
    if isinstance(final_answer, bool) or not isinstance(final_answer, (str, int, float)):
        return False
    return str(final_answer).strip() != ""


def _is_acceptable_answer(answer: Any) -> bool:
    return _is_text(answer) or (isinstance(answer, list) and bool(answer) and all(map(_is_text, answer)))


def load_references(path: str) -> list[dict]:
    """The records of a typed or qa JSON Lines file, checked so that scoring cannot fail halfway."""
    source, references, first_seen = str(path), [], {}
    for location, record in _jsonl_objects(Path(path)):
        record_id = _record_id(record, source, location)
        if record_id in first_seen:
            raise RecordError(source, location, f"id '{record_id}' appears again (first at {first_seen[record_id]})")
        problem = _reference_problem(record)
        if problem:
            raise RecordError(source, location, f"{problem} (id '{record_id}')")
        first_seen[record_id] = location
        references.append(record)
    if not references:
        raise RecordError(source, "whole file", "no records to score against")
    return references


# 3. Scoring, one function per type: (references, contents) -> metrics.


def _first_text(content: Content) -> str:
    """The answer text; for a list of samples outside code, the first sample (as pass@1 would)."""
    return content if isinstance(content, str) else content[0]


def _option_letters(reference: dict) -> set[str]:
    """Letters with an option; records read through ``datasets`` carry every file's letters, unused ones None."""
    return {letter for letter, option in reference["choices"].items() if option is not None}


def _score_choice(references: list[dict], contents: list[Content]) -> dict:
    letters = [extract_choice_letter(_first_text(c), _option_letters(r)) for r, c in zip(references, contents)]
    return {"accuracy": choice_accuracy(letters, [r["answer"] for r in references])}


def _math_reference_answer(reference: dict) -> str:
    """``final_answer`` as written (it is the answer, not text to search), else the solution's box."""
    if _has_final_answer(reference):
        return str(reference["final_answer"])
    return extract_final_math_answer(reference["answer"])


def _score_math(references: list[dict], contents: list[Content]) -> dict:
    predicted = [extract_final_math_answer(_first_text(content)) for content in contents]
    return {"accuracy": math_accuracy(predicted, [_math_reference_answer(r) for r in references])}


def _score_generic(references: list[dict], contents: list[Content]) -> dict:
    predictions, answers = [_first_text(c) for c in contents], [r["answer"] for r in references]
    return {**rouge_scores(predictions, answers), "exact_match": exact_match(predictions, answers)}


def _score_qa(references: list[dict], contents: list[Content]) -> dict:
    acceptable = [[r["answer"]] if isinstance(r["answer"], str) else list(r["answer"]) for r in references]
    return squad_scores([_first_text(content) for content in contents], acceptable)


def _score_code(references: list[dict], contents: list[Content | None], ks: Sequence[int]) -> dict:
    """pass@k over all problems; one without samples adds 0 and is not run.

    The evaluator averages over the problems it ran, so its pass@k is scaled by ran / all: the
    same as averaging with a 0 for each problem without an answer. pass@1 is always asked for (it
    is the primary metric); the evaluator leaves out a k larger than the fewest samples a problem has.
    """
    ks = tuple(sorted(set(ks) | {1}))
    answered = [(r, c) for r, c in zip(references, contents) if c is not None]
    if not answered:
        return {f"pass@{k}": 0.0 for k in ks}
    problems = [{key: r[key] for key in ("prompt", "test", "entry_point")} for r, _ in answered]
    results = code_pass_at_k(problems, [extract_code_samples(c) for _, c in answered], ks)
    answered_share = len(answered) / len(references)
    # The evaluator's totals ("samples", "passed") come as floats; they are counts.
    return {key: value * answered_share if key.startswith("pass@") else int(value) for key, value in results.items()}


SCORERS: dict[str, Callable[[list[dict], list[Content]], dict]] = {
    "choice": _score_choice,
    "math": _score_math,
    "generic-generate": _score_generic,
    "qa": _score_qa,
}


def _overall(metrics: dict) -> dict:
    types = [question_type for question_type in QUESTION_TYPES if question_type in metrics]
    primary_scores = [metrics[question_type][PRIMARY_METRICS[question_type]] for question_type in types]
    return {"score": round(sum(primary_scores) / len(primary_scores), 6), "types": types}


def score_answers(predictions: dict[str, Content], references: list[dict], code_ks=(1, 3)) -> dict:
    """Metrics per question type present, ``overall`` and ``missing_predictions`` (see module docstring)."""
    if not references:
        raise ValueError("no references to score against")
    by_type: dict[str, list[dict]] = {}
    for reference in references:
        question_type = reference_type(reference)
        if question_type not in QUESTION_TYPES:
            known = ", ".join(QUESTION_TYPES)
            raise ValueError(f"reference '{reference.get('id')}': type '{question_type}' is not one of {known}")
        by_type.setdefault(question_type, []).append(reference)
    metrics: dict[str, Any] = {}
    for question_type in QUESTION_TYPES:
        typed_references = by_type.get(question_type)
        if not typed_references:
            continue
        contents = [predictions.get(str(r["id"])) for r in typed_references]
        if question_type == "code-generate":
            scores = _score_code(typed_references, contents, code_ks)
        else:
            scores = SCORERS[question_type](typed_references, ["" if c is None else c for c in contents])
        metrics[question_type] = {**scores, "count": len(typed_references)}
    metrics["overall"] = _overall(metrics)
    metrics["missing_predictions"] = [str(r["id"]) for r in references if str(r["id"]) not in predictions]
    return metrics


# 4. Files out, and a table for people.


def write_metrics(metrics: dict, path: Path) -> Path:
    """Write metrics as JSON, never half a file."""
    return write_text_atomically(path, json.dumps(metrics, ensure_ascii=False, indent=2) + "\n")


def score_files(predictions_path: str, references_path: str, output_path: str | None = None) -> tuple[dict, Path]:
    """Score the files and write the metrics (default: ``metrics.json`` beside the predictions)."""
    metrics = score_answers(load_predictions(predictions_path), load_references(references_path))
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
    rows = [[question_type, str(metrics[question_type]["count"]),
             _metric_cells(metrics[question_type], PRIMARY_METRICS[question_type])] for question_type in types]
    total = sum(metrics[question_type]["count"] for question_type in types)
    rows.append(["overall", str(total), f"score {metrics['overall']['score']:.3f} (mean of primary metrics)"])
    table = markdown_table(["type", "count", "metrics"], rows)
    missing = metrics.get("missing_predictions", [])
    if missing:
        listed = ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else "")
        table += f"\n\n{len(missing)} reference(s) had no prediction and were scored wrong: {listed}"
    return table
