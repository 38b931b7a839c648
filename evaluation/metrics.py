"""Metric computations, one function per question type; every score is a float in [0, 1].

torchmetrics computes what it has (ROUGE, SQuAD, means); math equivalence is ``math_verify``'s;
pass@k comes from ``code_execution.py``, which runs the code. Inputs are answers already pulled
out of generated text (``answer_extraction.py``) where a type needs that, so each function here only
compares.

>>> choice_accuracy(["B", None], ["B", "C"])
0.5
"""

import threading

import torch
from math_verify import parse, verify
from torchmetrics.aggregation import MeanMetric
from torchmetrics.text import SQuAD
from torchmetrics.text.rouge import ROUGEScore

from evaluation.answer_extraction import normalize_text, rouge_normalize, rouge_tokenize

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")  # not rougeLsum: it needs nltk's punkt, not downloadable here
MATH_TIMEOUT_SECONDS = 5


# Every metric scores a whole answer list in one process: under data parallelism only rank 0 scores,
# and torchmetrics' default (gather every rank's state on compute) would wait for ranks that never come.
LOCAL = {"sync_on_compute": False}


def _rounded(value: torch.Tensor) -> float:
    """torchmetrics computes in float32: 6 decimals keep what is real and drop noise like 0.40000000596."""
    return round(float(value), 6)


def mean_of(values: list[float]) -> float:
    """Mean through torchmetrics' ``MeanMetric`` (0.0 for no values, where it would warn and give nan)."""
    if not values:
        return 0.0
    mean = MeanMetric(**LOCAL)
    mean.update(torch.tensor(values, dtype=torch.float64))
    return _rounded(mean.compute())


def choice_accuracy(predicted_letters: list[str | None], gold_letters: list[str]) -> float:
    """Share of predicted letters equal to the gold letter; ``None`` (no valid letter) is wrong.

    A mean of 0/1 correctness rather than ``MulticlassAccuracy``: records may have different
    numbers of options, and "no answer" is not a class.
    """
    return mean_of([float(predicted == gold) for predicted, gold in zip(predicted_letters, gold_letters)])


def _math_timeout_seconds() -> int | None:
    """math_verify times out with ``signal.alarm``, which raises outside the main thread: no timeout there."""
    return MATH_TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None


def math_answers_match(predicted_answer: str, reference_answer: str) -> bool:
    """Whether two final answers (``extract_final_math_answer`` output) are mathematically equal.

    Both are read as LaTeX (``$...$``), so ``\\frac{1}{2}`` equals ``0.5`` and ``44`` equals
    ``44.0``. An empty or unparsable answer is wrong.
    """
    if not predicted_answer.strip() or not reference_answer.strip():
        return False
    timeout = _math_timeout_seconds()
    gold = parse(f"${reference_answer}$", parsing_timeout=timeout)
    predicted = parse(f"${predicted_answer}$", parsing_timeout=timeout)
    if not gold or not predicted:
        return False
    return bool(verify(gold, predicted, timeout_seconds=timeout))


def math_accuracy(predicted_answers: list[str], reference_answers: list[str]) -> float:
    """Share of final answers equivalent to the reference's (see ``math_answers_match``)."""
    return mean_of([float(math_answers_match(p, r)) for p, r in zip(predicted_answers, reference_answers)])


def rouge_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure over pairs, with each CJK character a token (see ``rouge_normalize``)."""
    rouge = ROUGEScore(rouge_keys=ROUGE_KEYS, normalizer=rouge_normalize, tokenizer=rouge_tokenize, **LOCAL)
    scores = rouge(predictions, references)
    return {key: _rounded(scores[f"{key}_fmeasure"]) for key in ROUGE_KEYS}


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Share of predictions equal to the reference after ``normalize_text`` (case, spaces, end punctuation)."""
    return mean_of([float(normalize_text(p) == normalize_text(r)) for p, r in zip(predictions, references)])


def squad_scores(predictions: list[str], acceptable_answers: list[list[str]]) -> dict[str, float]:
    """SQuAD exact match and token F1, best over each question's acceptable answers.

    torchmetrics reports percentages; they are divided by 100 here so every metric is in [0, 1].
    SQuAD's normaliser splits on spaces, so an unspaced Chinese answer is one token.
    """
    preds = [{"id": str(index), "prediction_text": text} for index, text in enumerate(predictions)]
    target = [
        {"id": str(index), "answers": {"text": answers, "answer_start": [0] * len(answers)}}
        for index, answers in enumerate(acceptable_answers)
    ]
    scores = SQuAD(**LOCAL)(preds, target)
    return {"exact_match": _rounded(scores["exact_match"] / 100), "f1": _rounded(scores["f1"] / 100)}


def code_pass_at_k(problems: list[dict], samples: list[list[str]], ks: tuple[int, ...]) -> dict[str, float]:
    """pass@k per k by running each problem's samples against its tests (``code_execution.py``).

    Imported here, not at the top, so scoring the other types needs nothing that executes code.
    """
    from evaluation.code_execution import evaluate_code_samples

    return evaluate_code_samples(problems, samples, ks=tuple(ks))
