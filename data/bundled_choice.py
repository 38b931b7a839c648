"""Multiple-choice questions whose right option is computed, never typed in by hand.

Every generator returns the correct option text, three wrong ones, and the ``facts`` the tests
use to recompute which option is right. The prompt always names the specific numbers or words, so
no two questions share a prompt even where the kind of question repeats ("how many letters in
'elephant'" vs "... in 'planet'"). Where the gold letter lands is decided later, in
``place_gold``, so letters can be balanced per split.

>>> place_gold("4", ["5", "3", "6"], 2)
({'A': '5', 'B': '3', 'C': '4', 'D': '6'}, 'C')
"""

import random
from fractions import Fraction

from bundled_common import as_json_number, format_number

LETTERS = "ABCDE"
OPTIONS_PER_QUESTION = 4
DISTRACTORS = OPTIONS_PER_QUESTION - 1

# unit code → (English plural, Chinese name); conversions are (from, to, how many `to` in one `from`).
UNIT_NAMES = {
    "m": ("meters", "米"), "cm": ("centimeters", "厘米"), "mm": ("millimeters", "毫米"),
    "km": ("kilometers", "千米"),
    "kg": ("kilograms", "千克"), "g": ("grams", "克"), "L": ("liters", "升"), "mL": ("milliliters", "毫升"),
    "h": ("hours", "小时"), "min": ("minutes", "分钟"), "s": ("seconds", "秒"),
}
CONVERSIONS = [
    ("m", "cm", 100), ("km", "m", 1000), ("cm", "mm", 10), ("m", "mm", 1000), ("kg", "g", 1000),
    ("L", "mL", 1000), ("h", "min", 60), ("min", "s", 60),
]
# attribute → value range, how one person's value is stated, and the question asked for "max" and "min".
ATTRIBUTES = {
    "height": {
        "range": (120, 185),
        "statement": {"en": "{name} is {value} cm tall", "zh": "{name}身高{value}厘米"},
        "question": {"en": {"max": "Who is the tallest?", "min": "Who is the shortest?"},
                     "zh": {"max": "谁最高？", "min": "谁最矮？"}},
    },
    "age": {
        "range": (6, 70),
        "statement": {"en": "{name} is {value} years old", "zh": "{name}今年{value}岁"},
        "question": {"en": {"max": "Who is the oldest?", "min": "Who is the youngest?"},
                     "zh": {"max": "谁年龄最大？", "min": "谁年龄最小？"}},
    },
    "score": {
        "range": (40, 100),
        "statement": {"en": "{name} scored {value} points", "zh": "{name}考了{value}分"},
        "question": {"en": {"max": "Who scored the most points?", "min": "Who scored the fewest points?"},
                     "zh": {"max": "谁的分数最高？", "min": "谁的分数最低？"}},
    },
}
NAMES = {
    "en": ["Tom", "Anna", "Leo", "Mia", "Sam", "Lily", "Ben", "Zoe", "Max", "Emma", "Noah", "Ivy"],
    "zh": ["小明", "小红", "小刚", "小丽", "小华", "小军", "小芳", "小强", "小美", "小东", "小雨", "小林"],
}
WORDS = [
    "cat", "sun", "tree", "book", "apple", "river", "garden", "planet", "window", "kitchen", "blanket",
    "elephant", "mountain", "computer", "butterfly", "chocolate", "adventure", "basketball", "strawberry",
    "helicopter", "dog", "moon", "bread", "cloud", "pencil", "orange", "library", "umbrella", "dinosaur",
]


def place_gold(correct: str, distractors: list[str], gold_index: int) -> tuple[dict[str, str], str]:
    """Options lettered from A with the correct one at ``gold_index``; returns (choices, gold letter)."""
    options = list(distractors)
    options.insert(gold_index, correct)
    return dict(zip(LETTERS, options)), LETTERS[gold_index]


def _near_numbers(rng: random.Random, correct: Fraction, offsets: list[Fraction]) -> list[str]:
    """Three distinct positive wrong answers near ``correct``, as text."""
    candidates = [correct + offset for offset in offsets if correct + offset > 0 and offset != 0]
    rng.shuffle(candidates)
    wrong = []
    for value in candidates:
        text = format_number(value)
        if text not in wrong and text != format_number(correct):
            wrong.append(text)
    return wrong[:DISTRACTORS]


def arithmetic(rng: random.Random, language: str) -> dict:
    operator = rng.choice(["+", "−", "×"])
    if operator == "×":
        left, right = rng.randint(11, 99), rng.randint(3, 19)
    else:
        left, right = rng.randint(100, 999), rng.randint(11, 99)
    value = {"+": left + right, "−": left - right, "×": left * right}[operator]
    prompt = {"en": f"What is {left} {operator} {right}?", "zh": f"{left} {operator} {right} 等于多少？"}[language]
    offsets = [Fraction(delta) for delta in (-10, -2, -1, 1, 2, 10, right, -right)]
    wrong = _near_numbers(rng, Fraction(value), offsets)
    facts = {"left": left, "operator": operator, "right": right}
    return {"prompt": prompt, "correct": str(value), "wrong": wrong, "facts": facts}


def unit_conversion(rng: random.Random, language: str) -> dict:
    from_unit, to_unit, factor = rng.choice(CONVERSIONS)
    amount = Fraction(rng.randint(1, 19), rng.choice([1, 2]))
    value = amount * factor
    amount_text = format_number(amount)
    prompt = {
        "en": f"How many {UNIT_NAMES[to_unit][0]} are in {amount_text} {UNIT_NAMES[from_unit][0]}?",
        "zh": f"{amount_text}{UNIT_NAMES[from_unit][1]}等于多少{UNIT_NAMES[to_unit][1]}？",
    }[language]
    # The classic slips: a wrong power of ten, or forgetting to convert at all.
    wrong_factors = [Fraction(factor, 10), Fraction(factor * 10), Fraction(factor, 100), Fraction(1)]
    wrong = _near_numbers(rng, value, [amount * wrong - value for wrong in wrong_factors])
    facts = {"amount": as_json_number(amount), "from_unit": from_unit, "to_unit": to_unit}
    return {"prompt": prompt, "correct": format_number(value), "wrong": wrong, "facts": facts}


def who_is_most(rng: random.Random, language: str) -> dict:
    attribute = ATTRIBUTES[rng.choice(sorted(ATTRIBUTES))]
    names = rng.sample(NAMES[language], OPTIONS_PER_QUESTION)
    values = dict(zip(names, rng.sample(range(attribute["range"][0], attribute["range"][1] + 1), len(names))))
    pick = rng.choice(["max", "min"])
    winner = (max if pick == "max" else min)(names, key=values.get)
    statements = [attribute["statement"][language].format(name=name, value=values[name]) for name in names]
    if language == "en":
        listed = ", ".join(statements[:-1]) + f", and {statements[-1]}. "
    else:
        listed = "，".join(statements) + "。"
    prompt = listed + attribute["question"][language][pick]
    wrong = [name for name in names if name != winner]
    return {"prompt": prompt, "correct": winner, "wrong": wrong, "facts": {"values": values, "pick": pick}}


def _is_prime(number: int) -> bool:
    return number > 1 and all(number % divisor for divisor in range(2, int(number**0.5) + 1))


def next_prime(rng: random.Random, language: str) -> dict:
    """Wrong options: odd composites just above ``start`` and the prime after the right one."""
    start = rng.randint(10, 200)
    primes_above = [number for number in range(start + 1, start + 80) if _is_prime(number)]
    correct, second_prime = primes_above[0], primes_above[1]
    composites = [number for number in range(start + 1, second_prime + 12) if number % 2 and not _is_prime(number)]
    wrong = [str(second_prime)] + [str(number) for number in rng.sample(composites, DISTRACTORS - 1)]
    prompt = {
        "en": f"What is the smallest prime number greater than {start}?",
        "zh": f"大于{start}的最小质数是多少？",
    }[language]
    return {"prompt": prompt, "correct": str(correct), "wrong": wrong, "facts": {"start": start}}


def largest_multiple_below(rng: random.Random, language: str) -> dict:
    divisor, limit = rng.randint(3, 13), rng.randint(50, 300)
    correct = (limit - 1) // divisor * divisor
    wrong = _near_numbers(rng, Fraction(correct), [Fraction(delta) for delta in (-divisor, divisor, 1, -1)])
    prompt = {
        "en": f"What is the largest multiple of {divisor} that is less than {limit}?",
        "zh": f"小于{limit}的最大的{divisor}的倍数是多少？",
    }[language]
    return {"prompt": prompt, "correct": str(correct), "wrong": wrong, "facts": {"divisor": divisor, "limit": limit}}


def letter_count(rng: random.Random, language: str) -> dict:
    word = rng.choice(WORDS)
    wrong = _near_numbers(rng, Fraction(len(word)), [Fraction(delta) for delta in (-2, -1, 1, 2)])
    prompt = {
        "en": f"How many letters are in the word '{word}'?",
        "zh": f"英文单词“{word}”有几个字母？",
    }[language]
    return {"prompt": prompt, "correct": str(len(word)), "wrong": wrong, "facts": {"word": word}}


def reversed_word(rng: random.Random, language: str) -> dict:
    """Wrong options are near-misses: the word itself and the reversal with two letters swapped."""
    word = rng.choice([word for word in WORDS if len(word) >= 5])
    correct = word[::-1]
    wrong = {word}
    while len(wrong) < DISTRACTORS:
        position = rng.randrange(len(correct) - 1)
        swapped = correct[:position] + correct[position + 1] + correct[position] + correct[position + 2 :]
        if swapped != correct:
            wrong.add(swapped)
    prompt = {
        "en": f"Which option is the word '{word}' spelled backwards?",
        "zh": f"把英文单词“{word}”的字母倒过来写，是下面哪一个？",
    }[language]
    return {"prompt": prompt, "correct": correct, "wrong": sorted(wrong), "facts": {"word": word}}


CHOICE_KINDS = {
    "arithmetic": arithmetic,
    "unit_conversion": unit_conversion,
    "who_is_most": who_is_most,
    "next_prime": next_prime,
    "largest_multiple_below": largest_multiple_below,
    "letter_count": letter_count,
    "reversed_word": reversed_word,
}


def balanced_gold_positions(rng: random.Random, split_sizes: list[int]) -> list[int]:
    """Gold positions for a pool cut into splits: within each split, every letter is gold equally often (±1)."""
    positions = []
    for size in split_sizes:
        split_positions = [index % OPTIONS_PER_QUESTION for index in range(size)]
        rng.shuffle(split_positions)
        positions += split_positions
    return positions


def letter_choices(drafts: list[dict], gold_positions: list[int]) -> list[dict]:
    """Turn drafts (correct + wrong options) into records with lettered ``choices`` and a gold letter."""
    records = []
    for draft, gold_index in zip(drafts, gold_positions, strict=True):
        choices, gold = place_gold(draft["correct"], draft["wrong"], gold_index)
        fields = {key: value for key, value in draft.items() if key not in ("correct", "wrong", "facts")}
        records.append({**fields, "choices": choices, "answer": gold, "facts": draft["facts"]})
    return records
