"""Write the scenario example files: small labelled sets in four users' own layouts (shared/SCENARIOS.md).

Run by hand, and commit what it writes::

    python data/build_examples.py                                  # writes data/examples/
    python data/build_examples.py --out DIR --count-train 96       # elsewhere, a bigger train split

One folder per layout, each read by ``configs/scenarios/<folder>_*.yaml``:

- ``qa/``: a JSON list of SQuAD-style ``{"context", "question", "answer"}``, no ids (format ``qa``);
- ``math500/``: JSON Lines ``{"problem", "solution", "answer", "unique_id"}`` (format ``math``);
- ``alpaca/``: a JSON list of ``{"instruction", "input", "output", "history"}`` (format ``instruction``);
- ``think/``: JSON Lines ``{"question", "think", "answer"}`` (format ``think``).

Each folder has ``train``, ``val`` and ``test`` (labelled) and ``test_unlabeled`` (the test records
in the same order without their answers). Everything comes from fixed seeds and the standard
library, so two runs give byte-identical files. Each layout's records are one seeded list cut test
first, then val, then train: a larger ``--count-train`` keeps the same val and test records.

A benchmark makes bigger sets with the same functions (``qa_records``, ``math500_records``,
``alpaca_records``, ``think_records``: ``count`` records from ``seed``, a list of dicts)::

    sys.path.insert(0, "data"); from build_examples import qa_records, math500_records
"""

import argparse
import json
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
if str(DATA_DIR) not in sys.path:  # imported from elsewhere: the generators import their siblings by plain name
    sys.path.insert(0, str(DATA_DIR))

from bundled_math import MATH_KINDS  # noqa: E402
from examples_alpaca import alpaca_pool  # noqa: E402
from examples_qa import qa_pool  # noqa: E402
from examples_think import think_pool  # noqa: E402

SEED = 20250301
SPLIT_COUNTS = {"test": 16, "val": 16, "train": 48}  # cut in this order: test and val stay put as train grows
DEFAULT_OUT = DATA_DIR / "examples"
MAX_DRAWS = 200


def qa_records(count: int, seed: int = SEED) -> list[dict]:
    """SQuAD-style ``{"context", "question", "answer"}``: the answer is one span of the context."""
    return qa_pool(random.Random(f"{seed}-qa"), count)


def math500_records(count: int, seed: int = SEED) -> list[dict]:
    """Math500-style ``{"problem", "solution", "answer", "unique_id"}`` from the bundled English word
    problems: the solution's steps end in ``\\boxed{answer}``; ``unique_id`` is ``<kind>/<index>.json``."""
    rng = random.Random(f"{seed}-math500")
    kinds = list(MATH_KINDS.items())
    records, seen_problems = [], set()
    for index in range(count):
        kind, generate = kinds[index % len(kinds)]
        for _ in range(MAX_DRAWS):
            drawn = generate(rng, "en")
            if drawn["prompt"] not in seen_problems:
                break
        else:
            raise RuntimeError(f"{kind} keeps repeating problems: widen its ranges in bundled_math.py")
        seen_problems.add(drawn["prompt"])
        records.append({"problem": drawn["prompt"], "solution": drawn["answer"], "answer": drawn["final_answer"],
                        "unique_id": f"{kind}/{index}.json"})
    return records


def alpaca_records(count: int, seed: int = SEED) -> list[dict]:
    """Alpaca-style ``{"instruction", "input", "output", "history": [[user, assistant], ...]}``."""
    return alpaca_pool(random.Random(f"{seed}-alpaca"), count)


def think_records(count: int, seed: int = SEED) -> list[dict]:
    """Reasoning traces ``{"question", "think", "answer"}``."""
    return think_pool(random.Random(f"{seed}-think"), count)


@dataclass(frozen=True)
class Layout:
    folder: str
    records: Callable[[int, int], list[dict]]
    json_list: bool
    """A JSON list (``.json``) rather than JSON Lines (``.jsonl``)."""
    label_fields: tuple[str, ...]
    """What ``test_unlabeled`` leaves out."""

    @property
    def suffix(self) -> str:
        return ".json" if self.json_list else ".jsonl"


LAYOUTS = [
    Layout("qa", qa_records, json_list=True, label_fields=("answer",)),
    Layout("math500", math500_records, json_list=False, label_fields=("solution", "answer")),
    Layout("alpaca", alpaca_records, json_list=True, label_fields=("output",)),
    Layout("think", think_records, json_list=False, label_fields=("think", "answer")),
]


def cut_splits(records: list[dict], counts: dict[str, int]) -> dict[str, list[dict]]:
    splits, start = {}, 0
    for split, count in counts.items():
        splits[split] = records[start : start + count]
        start += count
    return splits


def write_records(path: Path, records: list[dict], json_list: bool) -> None:
    """UTF-8, ``\\n`` endings on every platform; a JSON list keeps one record per line, so it reads
    and diffs like JSON Lines."""
    lines = [json.dumps(record, ensure_ascii=False) for record in records]
    text = "[\n" + ",\n".join(lines) + "\n]\n" if json_list else "".join(line + "\n" for line in lines)
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)


def write_layout(layout: Layout, out_dir: Path, counts: dict[str, int]) -> None:
    folder = out_dir / layout.folder
    folder.mkdir(parents=True, exist_ok=True)
    splits = cut_splits(layout.records(sum(counts.values()), SEED), counts)
    for split, records in splits.items():
        write_records(folder / f"{split}{layout.suffix}", records, layout.json_list)
    unlabelled = [{key: value for key, value in record.items() if key not in layout.label_fields}
                  for record in splits["test"]]
    write_records(folder / f"test_unlabeled{layout.suffix}", unlabelled, layout.json_list)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    for split, count in SPLIT_COUNTS.items():
        parser.add_argument(f"--count-{split}", type=int, default=count, help=f"{split} records per layout")
    args = parser.parse_args(argv)
    counts = {split: getattr(args, f"count_{split}") for split in SPLIT_COUNTS}
    for layout in LAYOUTS:
        write_layout(layout, args.out, counts)
    summary = ", ".join(f"{split} {count}" for split, count in counts.items())
    print(f"wrote {args.out}/{{{','.join(layout.folder for layout in LAYOUTS)}}}: {summary}, "
          f"test_unlabeled {counts['test']} each", file=sys.stderr)


if __name__ == "__main__":
    main()
