"""The shipped lm-eval tasks' documents: the bundled test file (``data/bundled/test.jsonl``) as lm-eval reads it.

lm-eval reads a task's data from the hub unless the task gives ``custom_dataset``: these functions
build it from the file the repository ships, so ``sft eval`` scores something with no network. The
prompt is the one training and ``sft test`` render (``datamodules.formats.typed_prompt``), so a model
is asked as it was tuned; math answers are scored by the same extraction and ``math_verify`` check as
``sft test`` (``evaluation.metrics``). lm-eval imports this file by its path from the task YAMLs.
"""

import json
from pathlib import Path

import datasets

from datamodules.formats import FieldReader, typed_prompt
from evaluation.answer_extraction import extract_final_math_answer
from evaluation.metrics import math_answers_match

BUNDLED_TEST = Path(__file__).resolve().parents[2] / "data" / "bundled" / "test.jsonl"


def bundled_records(question_type: str, path: Path = BUNDLED_TEST) -> list[dict]:
    """The records of one type, in file order; a missing file is one line saying where it was looked for."""
    if not path.is_file():
        raise FileNotFoundError(f"the shipped eval tasks read {path}, which is missing: run sft eval from a "
                                "checkout of the repository (python data/build_bundled.py rewrites it)")
    with path.open(encoding="utf-8") as lines:
        records = [json.loads(line) for line in lines if line.strip()]
    return [record for record in records if record["type"] == question_type]


def choice_doc(record: dict) -> dict:
    """A choice record as an lm-eval multiple-choice document: the letters, and the gold one's index.

    >>> doc = choice_doc({"type": "choice", "prompt": "Even?", "choices": {"A": "3", "B": "4"}, "answer": "B"})
    >>> doc["question"].splitlines(), doc["choices"], doc["gold"]
    (['Even?', '', 'A. 3', 'B. 4', '', 'Answer with the letter of the correct option.'], ['A', 'B'], 1)
    """
    letters = sorted(record["choices"])
    return {"id": record.get("id", ""), "question": typed_prompt(FieldReader(record)), "choices": letters,
            "gold": letters.index(record["answer"])}


def math_doc(record: dict) -> dict:
    """A math record as an lm-eval generation document; the target is the final answer alone."""
    return {"id": record.get("id", ""), "question": typed_prompt(FieldReader(record)),
            "final_answer": record["final_answer"]}


def choice_docs(**_metadata) -> datasets.DatasetDict:
    """``custom_dataset`` of ``sft_bundled_choice`` (lm-eval passes the task's metadata, unused here)."""
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([choice_doc(r) for r in bundled_records("choice")])})


def math_docs(**_metadata) -> datasets.DatasetDict:
    """``custom_dataset`` of ``sft_bundled_math``."""
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([math_doc(r) for r in bundled_records("math")])})


def math_results(doc: dict, results: list[str]) -> dict:
    """``process_results`` of ``sft_bundled_math``: 1 where the answer's final number equals the reference's.

    >>> math_results({"final_answer": "50"}, ["160 - 110 = 50. \\\\boxed{50}"]), math_results({"final_answer": "50"}, ["51"])
    ({'acc': 1.0}, {'acc': 0.0})
    """
    return {"acc": float(math_answers_match(extract_final_math_answer(results[0]), doc["final_answer"]))}
