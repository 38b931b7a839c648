"""Reasoning-trace records ``{"question", "think", "answer"}``: medication and fluid arithmetic as a
ward nurse would check it, with the working in ``think`` and a one-sentence answer.

The numbers are made up, for training and testing the pipeline only: they are not dosing guidance.
Each generator draws the numbers so every division comes out whole, writes every step of the
working as ``a op b = c`` (the tests check each one), and ends the answer with the last result.

>>> import random
>>> record = dose_by_weight(random.Random(0))
>>> record["answer"].split()[-2] in record["think"]
True
"""

import random
from fractions import Fraction

from bundled_common import format_number

PATIENTS = ["A child", "A patient", "An adult patient", "A teenager", "An elderly patient"]
MAX_DRAWS = 200


def dose_by_weight(rng: random.Random) -> dict:
    per_kg, weight = rng.choice([5, 10, 15, 20]), rng.randint(8, 70)
    dose = per_kg * weight
    return {
        "question": f"{rng.choice(PATIENTS)} weighs {weight} kg and is prescribed {per_kg} mg per kg for each "
                    "dose. How many milligrams is one dose?",
        "think": f"The dose is {per_kg} mg for every kilogram of body weight, and the weight is {weight} kg. "
                 f"{per_kg} × {weight} = {dose}.",
        "answer": f"One dose is {dose} mg.",
    }


def daily_total(rng: random.Random) -> dict:
    hours = rng.choice([4, 6, 8, 12])
    dose = rng.choice([25, 50, 75, 100, 125, 150, 200, 250, 300, 400, 500])
    doses, total = 24 // hours, 24 // hours * dose
    return {
        "question": f"{rng.choice(PATIENTS)} is given {dose} mg of a medicine every {hours} hours. How many "
                    "milligrams is that in one day?",
        "think": f"A day has 24 hours and a dose comes every {hours} hours. 24 ÷ {hours} = {doses} doses a day. "
                 f"Each is {dose} mg. {doses} × {dose} = {total}.",
        "answer": f"That is {total} mg a day.",
    }


def tablets_per_dose(rng: random.Random) -> dict:
    strength, tablets = rng.choice([5, 10, 20, 25, 40, 50, 100, 200, 250, 500]), rng.randint(2, 4)
    dose = strength * tablets
    return {
        "question": f"{rng.choice(PATIENTS)} is prescribed {dose} mg and each tablet contains {strength} mg. "
                    "How many tablets make one dose?",
        "think": f"Each tablet holds {strength} mg and the dose is {dose} mg. {dose} ÷ {strength} = {tablets}.",
        "answer": f"One dose is {tablets} tablets.",
    }


def infusion_rate(rng: random.Random) -> dict:
    hours, rate = rng.choice([2, 3, 4, 5, 6, 8, 10, 12]), rng.choice([25, 50, 75, 100, 125, 150, 200])
    volume = hours * rate
    return {
        "question": f"{volume} mL of fluid is to be infused over {hours} hours. At how many millilitres per hour "
                    "should the pump be set?",
        "think": f"The whole volume is {volume} mL and it runs over {hours} hours. {volume} ÷ {hours} = {rate}.",
        "answer": f"Set the pump to {rate} mL per hour.",
    }


def fever_in_fahrenheit(rng: random.Random) -> dict:
    celsius = Fraction(rng.randint(70, 82), 2)  # 35 to 41 °C in halves: ×9÷5 keeps one decimal place
    times_nine, divided = celsius * 9, celsius * 9 / 5
    fahrenheit = divided + 32
    shown = dict(zip(["celsius", "times_nine", "divided", "fahrenheit"],
                     map(format_number, (celsius, times_nine, divided, fahrenheit))))
    return {
        "question": f"{rng.choice(PATIENTS)}'s temperature is {shown['celsius']} °C. What is it in degrees "
                    "Fahrenheit?",
        "think": "Fahrenheit is Celsius times 9, divided by 5, plus 32. {celsius} × 9 = {times_nine}. "
                 "{times_nine} ÷ 5 = {divided}. {divided} + 32 = {fahrenheit}.".format(**shown),
        "answer": f"The temperature is {shown['fahrenheit']} °F.",
    }


def fluid_balance(rng: random.Random) -> dict:
    drunk, infused = rng.randint(4, 16) * 100, rng.randint(2, 10) * 100
    intake = drunk + infused
    passed = rng.randint(5, intake // 100 - 1) * 100
    balance = intake - passed
    return {
        "question": f"Over a day a patient drank {drunk} mL, received {infused} mL by drip and passed {passed} mL "
                    "of urine. What is the fluid balance?",
        "think": f"Fluid in is what was drunk plus the drip. {drunk} + {infused} = {intake}. Fluid out is the "
                 f"urine. {intake} − {passed} = {balance}.",
        "answer": f"The fluid balance is positive by {balance} mL.",
    }


THINK_KINDS = [dose_by_weight, daily_total, tablets_per_dose, infusion_rate, fever_in_fahrenheit, fluid_balance]


def think_pool(rng: random.Random, count: int) -> list[dict]:
    """``count`` records taking the kinds in turn (one out of new questions is skipped), no question repeated."""
    records, seen, exhausted = [], set(), set()
    for index in range(count):
        start = index % len(THINK_KINDS)
        for kind in [kind for kind in THINK_KINDS[start:] + THINK_KINDS[:start] if kind not in exhausted]:
            record = _unseen(rng, kind, seen)
            if record is not None:
                break
            exhausted.add(kind)
        else:
            raise RuntimeError(f"the think generators give only {len(records)} distinct questions: widen their ranges")
        records.append(record)
    return records


def _unseen(rng: random.Random, kind, seen: set[str]) -> dict | None:
    for _ in range(MAX_DRAWS):
        record = kind(rng)
        if record["question"] not in seen:
            seen.add(record["question"])
            return record
    return None
