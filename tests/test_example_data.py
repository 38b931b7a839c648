"""The scenario example files (data/examples/) are what data/build_examples.py writes, and right.

Answers are checked with this file's own code, not the generators': a QA answer is one span of its
paragraph; every worked step (``a × b = c``) of a maths solution or a think trace holds, takes its
numbers from the question or from earlier steps, and the box (the answer) states the last result;
every Alpaca output, and every turn of its history, is recomputed from its instruction and input.
Each file is read by the project's own reader in its format. No network, no model.
"""

import json
import operator
import re
import subprocess
import sys
from fractions import Fraction
from functools import cache
from pathlib import Path

import pytest

from datamodules.normalize import ConversationSpec, read_records

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = REPO_ROOT / "data" / "examples"
GENERATOR = REPO_ROOT / "data" / "build_examples.py"
SPLIT_COUNTS = {"train": 48, "val": 16, "test": 16}
# folder -> (file suffix, the project's format, the layout's fields, what test_unlabeled leaves out)
LAYOUTS = {
    "qa": (".json", "qa", {"context", "question", "answer"}, {"answer"}),
    "math500": (".jsonl", "math", {"problem", "solution", "answer", "unique_id"}, {"solution", "answer"}),
    "alpaca": (".json", "instruction", {"instruction", "input", "output", "history"}, {"output"}),
    "think": (".jsonl", "think", {"question", "think", "answer"}, {"think", "answer"}),
}
FILES = [(folder, split) for folder in LAYOUTS for split in (*SPLIT_COUNTS, "test_unlabeled")]
QUESTION_FIELD = {"qa": "question", "math500": "problem", "alpaca": "instruction", "think": "question"}


def path_of(folder: str, split: str) -> Path:
    return EXAMPLES_DIR / folder / f"{split}{LAYOUTS[folder][0]}"


@cache
def load(folder: str, split: str) -> tuple[dict, ...]:
    text = path_of(folder, split).read_text(encoding="utf-8")
    records = json.loads(text) if LAYOUTS[folder][0] == ".json" else [json.loads(line) for line in text.splitlines()]
    assert all(isinstance(record, dict) for record in records)
    return tuple(records)


def labelled(folder: str) -> list[dict]:
    return [record for split in SPLIT_COUNTS for record in load(folder, split)]


# --- whole files --------------------------------------------------------------------------------


def test_regenerating_gives_byte_identical_files(tmp_path):
    subprocess.run([sys.executable, str(GENERATOR), "--out", str(tmp_path)], check=True, capture_output=True)
    written = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*") if path.is_file())
    committed = sorted(path.relative_to(EXAMPLES_DIR) for path in EXAMPLES_DIR.rglob("*") if path.is_file())
    assert written == committed
    for relative in committed:
        assert (tmp_path / relative).read_bytes() == (EXAMPLES_DIR / relative).read_bytes(), relative


def test_a_bigger_train_split_keeps_val_and_test_and_extends_train(tmp_path):
    subprocess.run([sys.executable, str(GENERATOR), "--out", str(tmp_path), "--count-train", "60"],
                   check=True, capture_output=True)
    for folder, (suffix, *_) in LAYOUTS.items():
        for split in ("val", "test", "test_unlabeled"):
            assert (tmp_path / folder / f"{split}{suffix}").read_bytes() == path_of(folder, split).read_bytes()
        bigger = (tmp_path / folder / f"train{suffix}").read_text(encoding="utf-8")
        bigger_records = json.loads(bigger) if suffix == ".json" else [json.loads(line) for line in bigger.splitlines()]
        assert len(bigger_records) == 60 and bigger_records[:48] == list(load(folder, "train"))


def test_the_example_files_are_small():
    assert sum(path.stat().st_size for path in EXAMPLES_DIR.rglob("*") if path.is_file()) < 200_000


@pytest.mark.parametrize("folder", LAYOUTS)
def test_splits_have_their_counts_fields_and_no_repeated_question(folder):
    _, _, fields, label_fields = LAYOUTS[folder]
    for split, count in SPLIT_COUNTS.items():
        records = load(folder, split)
        assert len(records) == count
        assert all(set(record) == fields for record in records), split
    unlabelled = load(folder, "test_unlabeled")
    assert list(unlabelled) == [{k: v for k, v in r.items() if k not in label_fields} for r in load(folder, "test")]
    questions = [json.dumps([r[QUESTION_FIELD[folder]], r.get("input"), r.get("context"), r.get("history")])
                 for r in labelled(folder)]
    assert len(questions) == len(set(questions))


@pytest.mark.parametrize("folder, split", FILES, ids=lambda value: str(value))
def test_each_file_reads_with_the_projects_reader_in_its_format(folder, split):
    records = read_records(str(path_of(folder, split)), ConversationSpec(LAYOUTS[folder][1]))
    assert len(records) == len(load(folder, split))
    assert all(record.labelled == (split != "test_unlabeled") for record in records)
    expected_ids = [r["unique_id"] for r in load(folder, split)] if folder == "math500" else \
        [str(position) for position in range(len(records))]  # no ids: answers are keyed by position
    assert [record.id for record in records] == expected_ids


def test_importable_generators_give_lists_of_records_in_the_layouts():
    sys.path.insert(0, str(GENERATOR.parent))
    try:
        from build_examples import math500_records, qa_records
    finally:
        sys.path.remove(str(GENERATOR.parent))
    qa, maths = qa_records(7, 1), math500_records(9, 1)
    assert [set(record) for record in qa] == [LAYOUTS["qa"][2]] * 7
    assert [set(record) for record in maths] == [LAYOUTS["math500"][2]] * 9
    assert qa_records(7, 1) == qa and qa_records(7, 2) != qa  # the seed decides
    assert len({record["unique_id"] for record in math500_records(200, 3)}) == 200


# --- answers, recomputed --------------------------------------------------------------------------


def test_qa_is_a_json_list_without_ids_and_each_answer_is_one_span_of_its_context():
    for split in (*SPLIT_COUNTS, "test_unlabeled"):
        assert path_of("qa", split).read_text(encoding="utf-8").startswith("[")
        assert not any("id" in record for record in load("qa", split))
    for record in labelled("qa"):
        assert record["context"].count(record["answer"]) == 1, record
        question = record["question"]
        if question.startswith(("How many", "How far", "How deep", "How large", "When", "In which year")):
            assert re.search(r"\d", record["answer"]), record  # a number or a date
        if question.startswith(("Where", "Who", "To which city")):
            assert record["answer"][0].isupper(), record  # a place or a person


STEP = re.compile(r"(\d+(?:\.\d+)?) ([×÷+−]) (\d+(?:\.\d+)?)(%?) = (-?\d+(?:\.\d+)?)( remainder \d+)?")
OPERATIONS = {"×": operator.mul, "÷": operator.truediv, "+": operator.add, "−": operator.sub}


def numbers_in(text: str) -> list[Fraction]:
    return [Fraction(number) for number in re.findall(r"\d+(?:\.\d+)?", text.replace(",", ""))]


def checked_steps(question: str, working: str, constants: set[int] = frozenset()) -> Fraction:
    """Every ``a op b = c`` of ``working`` holds; a and b come from the question, an earlier result or
    ``constants`` (a percentage may be 100 minus the question's); returns the last result."""
    steps = STEP.findall(working)
    assert steps and len(steps) == working.count("="), working  # no step the pattern missed
    known = set(numbers_in(question)) | {Fraction(value) for value in constants}
    for left, sign, right, percent, result, remainder in steps:
        a, b, c = Fraction(left), Fraction(right), Fraction(result)
        assert a in known, (left, working)
        assert (100 - b in known) if percent else (b in known), (right, working)
        if percent:
            b /= 100
        if remainder:  # "17 ÷ 4 = 4 remainder 1"
            assert a == c * b + int(remainder.split()[-1]) and int(remainder.split()[-1]) < b, working
        else:
            assert OPERATIONS[sign](a, b) == c, (left, sign, right, result)
        known.add(c)
    return Fraction(steps[-1][4])


def boxed(solution: str) -> str:
    return re.findall(r"\\boxed\{([^{}]*)\}", solution)[-1]


def test_math500_solutions_hold_step_by_step_and_box_the_answer():
    for record in labelled("math500"):
        last = checked_steps(record["problem"], record["solution"])
        assert record["solution"].endswith(f"\\boxed{{{record['answer']}}}")
        assert boxed(record["solution"]) == record["answer"] and Fraction(record["answer"]) == last
    ids = [record["unique_id"] for record in labelled("math500")]
    assert len(ids) == len(set(ids)) and all(re.fullmatch(r"[a-z_]+/\d+\.json", i) for i in ids)


def test_think_traces_hold_step_by_step_and_the_answer_states_the_last_result():
    for record in labelled("think"):
        assert record["think"].strip() and record["answer"].strip()
        assert "<think>" not in record["think"] and "</think>" not in record["answer"]  # the format adds the tags
        last = checked_steps(record["question"], record["think"], constants={24, 9, 5, 32})
        assert numbers_in(record["answer"]) == [last], record


WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
FOLLOW_UP = "Now do the same with this one."


def alpaca_output(instruction: str, given: str) -> str:
    """What the output must be, computed here from the instruction and the input."""
    numbers = [int(n) for n in given.split(", ")] if re.fullmatch(r"\d+(, \d+)+", given) else []
    by_instruction = {
        "Reverse the letters of this word.": lambda: given[::-1],
        "Sort these numbers from smallest to largest.": lambda: ", ".join(map(str, sorted(numbers))),
        "Add up these numbers.": lambda: str(sum(numbers)),
        "Which of these numbers is the largest?": lambda: str(max(numbers)),
        "Write this phrase in capital letters.": lambda: given.upper(),
        "How many words are in this sentence?": lambda: str(len(given.split())),
        "Convert this temperature from Celsius to Fahrenheit.":
            lambda: f"{Fraction(given.removesuffix(' °C')) * 9 / 5 + 32} °F",
    }
    if instruction in by_instruction:
        return by_instruction[instruction]()
    days, start = re.fullmatch(r"Which day of the week comes (\d+) days after (\w+)\?", instruction).groups()
    assert given == ""
    return WEEKDAYS[(WEEKDAYS.index(start) + int(days)) % 7]


def test_alpaca_outputs_and_history_turns_are_right():
    follow_ups = 0
    for record in labelled("alpaca"):
        turns = [(*user.partition("\n\n")[::2], assistant) for user, assistant in record["history"]]
        for instruction, given, assistant in turns:
            assert assistant == alpaca_output(instruction, given), (instruction, given)
        instruction = record["instruction"]
        if instruction == FOLLOW_UP:  # the task is the last history turn's, on a new input
            follow_ups += 1
            instruction = turns[-1][0]
            assert record["input"] != turns[-1][1]
        assert record["output"] == alpaca_output(instruction, record["input"]), record
    assert follow_ups >= 10 and sum(1 for record in labelled("alpaca") if not record["history"]) >= 10
