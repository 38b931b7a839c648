"""Alpaca-style instruction records with a chat history: small text and number tasks with one right output.

A record is ``{"instruction", "input", "output", "history": [[user, assistant], ...]}``. Each task
draws its input first and computes the output from it; an earlier turn of the history is another
task, written the way the ``instruction`` format writes a prompt (instruction, blank line, input).
Some records continue the conversation: "Now do the same with this one." with a new input, whose
output follows the task of the last history turn, so the history is needed to answer.

>>> import random
>>> reverse_word(random.Random(1))["output"] == reverse_word(random.Random(1))["input"][::-1]
True
"""

import random

from bundled_generic import ADJECTIVES, NOUNS, SENTENCE_PARTS, WEEKDAYS, WORDS

FOLLOW_UP = "Now do the same with this one."
MAX_DRAWS = 200


def _numbers(rng: random.Random) -> list[int]:
    return rng.sample(range(1, 100), rng.randint(3, 5))


def _listed(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers))


def reverse_word(rng: random.Random) -> dict:
    word = rng.choice(WORDS)
    return {"instruction": "Reverse the letters of this word.", "input": word, "output": word[::-1]}


def sort_numbers(rng: random.Random) -> dict:
    numbers = _numbers(rng)
    return {"instruction": "Sort these numbers from smallest to largest.", "input": _listed(numbers),
            "output": _listed(sorted(numbers))}


def add_numbers(rng: random.Random) -> dict:
    numbers = _numbers(rng)
    return {"instruction": "Add up these numbers.", "input": _listed(numbers), "output": str(sum(numbers))}


def largest_number(rng: random.Random) -> dict:
    numbers = _numbers(rng)
    return {"instruction": "Which of these numbers is the largest?", "input": _listed(numbers),
            "output": str(max(numbers))}


def capitals(rng: random.Random) -> dict:
    phrase = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    return {"instruction": "Write this phrase in capital letters.", "input": phrase, "output": phrase.upper()}


def count_words(rng: random.Random) -> dict:
    sentence = " ".join(filter(None, (rng.choice(words) for words in SENTENCE_PARTS.values()))) + "."
    return {"instruction": "How many words are in this sentence?", "input": sentence,
            "output": str(len(sentence.split()))}


def celsius_to_fahrenheit(rng: random.Random) -> dict:
    celsius = 5 * rng.randint(-8, 20)  # a multiple of 5: a whole number of degrees Fahrenheit
    return {"instruction": "Convert this temperature from Celsius to Fahrenheit.", "input": f"{celsius} °C",
            "output": f"{celsius * 9 // 5 + 32} °F"}


def weekday_after(rng: random.Random) -> dict:
    """No input: the whole question is the instruction (Alpaca leaves ``input`` empty then)."""
    start, days = rng.randrange(7), rng.randint(2, 12)
    weekdays = WEEKDAYS["en"]
    return {"instruction": f"Which day of the week comes {days} days after {weekdays[start]}?", "input": "",
            "output": weekdays[(start + days) % 7]}


TASKS = [reverse_word, sort_numbers, add_numbers, largest_number, capitals, count_words, celsius_to_fahrenheit,
         weekday_after]
FOLLOWABLE = [task for task in TASKS if task is not weekday_after]  # tasks whose input can be swapped


def _turn(task_record: dict) -> list[str]:
    """One history pair, the user side written as the ``instruction`` format writes a prompt."""
    user = task_record["instruction"]
    if task_record["input"]:
        user += f"\n\n{task_record['input']}"
    return [user, task_record["output"]]


def alpaca_record(rng: random.Random, turns: int, follow_up: bool, task) -> dict:
    """``turns`` earlier turns, then ``task``, or (``follow_up``) the last turn's task on a new input."""
    history_tasks = [rng.choice(FOLLOWABLE if follow_up and turn == turns - 1 else TASKS) for turn in range(turns)]
    history = [_turn(history_task(rng)) for history_task in history_tasks]
    if follow_up:
        current = history_tasks[-1](rng)
        current["instruction"] = FOLLOW_UP
    else:
        current = task(rng)
    return {**current, "history": history}


def alpaca_pool(rng: random.Random, count: int) -> list[dict]:
    """``count`` records: 0, 1 and 2 history turns in turn, half of those with history following up, the
    tasks in turn (one out of new records is skipped); no (instruction, input, history) repeated."""
    records, seen, exhausted = [], set(), set()
    for index in range(count):
        turns = index % 3
        follow_up = turns > 0 and index % 2 == 1
        start = (index // 3) % len(TASKS)
        for task in [task for task in TASKS[start:] + TASKS[:start] if (turns, task) not in exhausted]:
            record = _unseen(lambda: alpaca_record(rng, turns, follow_up, task), seen)
            if record is not None:
                break
            exhausted.add((turns, task))  # e.g. every word reversed with no history before it
        else:
            raise RuntimeError(f"the Alpaca tasks give only {len(records)} distinct records: add words or tasks")
        records.append(record)
    return records


def _unseen(draw, seen: set) -> dict | None:
    """A fresh record from ``draw`` (a follow-up's input differs from the turn it follows), or None."""
    for _ in range(MAX_DRAWS):
        record = draw()
        key = (record["instruction"], record["input"], str(record["history"]))
        repeats_last_input = record["instruction"] == FOLLOW_UP and record["history"][-1][0].endswith(
            "\n\n" + record["input"])
        if key not in seen and not repeats_last_input:
            seen.add(key)
            return record
    return None
