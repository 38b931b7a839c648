"""Helpers shared by the bundled-data generators: exact number text and unique question pools.

Numbers are kept as ``Fraction`` while computing, so ``2.5 × 6`` is exactly ``15`` and a
discount of 20% on 37 is exactly ``29.6``; they become text only at the end, once.

>>> format_number(Fraction(59, 2))
'29.5'
"""

import random
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction

LANGUAGES = ("en", "zh")

# How many fresh draws one slot of a pool may take before we decide the templates are too few.
MAX_DRAWS_PER_SLOT = 200

# A generator takes the random source and a language and returns one record's fields.
Generator = Callable[[random.Random, str], dict]


def format_number(value: Fraction | int | float) -> str:
    """Exact decimal text for a value with a terminating decimal expansion: 44, 2.5, 29.75."""
    exact = Fraction(str(value)) if isinstance(value, float) else Fraction(value)
    text = format(Decimal(exact.numerator) / Decimal(exact.denominator), "f")
    if Fraction(text) != exact:
        raise ValueError(f"{exact} has no short exact decimal form; pick friendlier numbers")
    return text.rstrip("0").rstrip(".") if "." in text else text


def as_json_number(value: Fraction | int) -> int | float:
    """A number for a JSON ``facts`` field: an int when whole, else the float of its decimal text."""
    text = format_number(value)
    return float(text) if "." in text else int(text)


def unique_pool(
    rng: random.Random, kinds: dict[str, Generator], count: int, seen_prompts: set[str]
) -> list[dict]:
    """``count`` records cycling through every (kind, language) pair, no prompt repeated.

    Cycling rather than drawing a kind at random keeps every kind and both languages evenly
    represented in each split. ``seen_prompts`` is shared across question types, so no two
    records anywhere in the bundle ask the same question.
    """
    slots = [(kind, language) for kind in kinds for language in LANGUAGES]
    records = []
    for index in range(count):
        kind, language = slots[index % len(slots)]
        record = _draw_unseen(rng, kinds[kind], language, seen_prompts)
        seen_prompts.add(record["prompt"])
        records.append({"kind": kind, "language": language, **record})
    return records


def _draw_unseen(rng: random.Random, generate: Generator, language: str, seen_prompts: set[str]) -> dict:
    for _ in range(MAX_DRAWS_PER_SLOT):
        record = generate(rng, language)
        if record["prompt"] not in seen_prompts:
            return record
    raise RuntimeError(f"{generate.__name__} ({language}) keeps repeating prompts: add templates or wider ranges")
