"""Everyday-arithmetic word problems (shopping, change, discounts, splitting a bill), English and Chinese.

Each generator draws the numbers first, computes the answer exactly, and only then writes the
question and a short worked solution around them. The numbers go into ``facts`` under the names
the tests use to recompute the answer, so a template that says one number and computes with
another is caught.

>>> import random
>>> record = unit_price_plus_extra(random.Random(0), "en")
>>> record["answer"].endswith("\\\\boxed{" + record["final_answer"] + "}")
True
"""

import random
from fractions import Fraction

from bundled_common import as_json_number, format_number

NAMES = {
    "en": ["Tom", "Anna", "Leo", "Mia", "Sam", "Lily", "Ben", "Zoe", "Max", "Emma"],
    "zh": ["小明", "小红", "小刚", "小丽", "小华", "小军", "小芳", "小强", "小美", "小东"],
}
# (English plural, Chinese measure word, Chinese noun, cheapest, dearest unit price)
ITEMS = [
    ("pens", "支", "笔", 2, 15),
    ("notebooks", "个", "笔记本", 3, 20),
    ("apples", "个", "苹果", 2, 6),
    ("cups of tea", "杯", "茶", 5, 18),
    ("comic books", "本", "漫画书", 8, 30),
    ("tickets", "张", "门票", 10, 60),
    ("packs of cards", "盒", "卡片", 4, 16),
    ("toy cars", "辆", "玩具车", 12, 45),
]
# (English name, Chinese name, cheapest, dearest price per kilogram)
PRODUCE = [
    ("rice", "大米", 4, 9),
    ("pork", "猪肉", 20, 36),
    ("grapes", "葡萄", 8, 24),
    ("tomatoes", "西红柿", 4, 12),
]
BILLS = (20, 50, 100)
PERCENTS_OFF = (10, 20, 25, 50)


# Punctuation between worked steps and before the box, so a Chinese question gets a Chinese-looking answer.
STEP_SEPARATOR = {"en": (", ", ". "), "zh": ("，", "。")}


def _solution(steps: list[str], result: Fraction, language: str) -> tuple[str, str]:
    """The worked solution text and the plain final answer: ``"3 × 12 = 36, 36 + 8 = 44. \\boxed{44}"``."""
    final_answer = format_number(result)
    between, before_box = STEP_SEPARATOR[language]
    return between.join(steps) + before_box + f"\\boxed{{{final_answer}}}", final_answer


def _record(prompt: str, steps: list[str], result: Fraction, facts: dict, language: str) -> dict:
    answer, final_answer = _solution(steps, result, language)
    return {"prompt": prompt, "answer": answer, "final_answer": final_answer, "facts": facts}


def _priced_item(rng: random.Random, dearest_allowed: int = 10**6) -> tuple[str, str, str, int]:
    """An item's English plural, Chinese measure word and noun, and a unit price in its range."""
    plural, measure, noun, cheapest, dearest = rng.choice([item for item in ITEMS if item[3] <= dearest_allowed])
    return plural, measure, noun, rng.randint(cheapest, min(dearest, dearest_allowed))


def unit_price_plus_extra(rng: random.Random, language: str) -> dict:
    plural, measure, noun, price = _priced_item(rng)
    quantity, extra = rng.randint(2, 9), rng.randint(3, 25)
    name = rng.choice(NAMES[language])
    cost = quantity * price
    prompt = {
        "en": f"{name} buys {quantity} {plural} at {price} dollars each and a bag for {extra} dollars. "
        f"How many dollars does {name} spend in total?",
        "zh": f"{name}买了{quantity}{measure}{noun}，每{measure}{price}元，又买了一个{extra}元的袋子，一共花了多少元？",
    }[language]
    steps = [f"{quantity} × {price} = {cost}", f"{cost} + {extra} = {cost + extra}"]
    facts = {"quantity": quantity, "price": price, "extra": extra}
    return _record(prompt, steps, Fraction(cost + extra), facts, language)


def two_items(rng: random.Random, language: str) -> dict:
    (plural_1, measure_1, noun_1, price_1), (plural_2, measure_2, noun_2, price_2) = _two_different_items(rng)
    count_1, count_2 = rng.randint(2, 6), rng.randint(2, 6)
    name = rng.choice(NAMES[language])
    cost_1, cost_2 = count_1 * price_1, count_2 * price_2
    prompt = {
        "en": f"{name} buys {count_1} {plural_1} at {price_1} dollars each and {count_2} {plural_2} "
        f"at {price_2} dollars each. What is the total cost in dollars?",
        "zh": f"{name}买了{count_1}{measure_1}{noun_1}，每{measure_1}{price_1}元，还买了{count_2}{measure_2}{noun_2}，"
        f"每{measure_2}{price_2}元。一共要付多少元？",
    }[language]
    steps = [
        f"{count_1} × {price_1} = {cost_1}",
        f"{count_2} × {price_2} = {cost_2}",
        f"{cost_1} + {cost_2} = {cost_1 + cost_2}",
    ]
    facts = {"first_count": count_1, "first_price": price_1, "second_count": count_2, "second_price": price_2}
    return _record(prompt, steps, Fraction(cost_1 + cost_2), facts, language)


def _two_different_items(rng: random.Random) -> tuple[tuple, tuple]:
    while True:
        first, second = _priced_item(rng), _priced_item(rng)
        if first[0] != second[0]:
            return first, second


def change_from_bill(rng: random.Random, language: str) -> dict:
    """The note is drawn first and the basket kept under it, so the change is never negative."""
    bill = rng.choice(BILLS)
    plural, measure, noun, price = _priced_item(rng, dearest_allowed=(bill - 1) // 2)
    quantity = rng.randint(2, min(9, (bill - 1) // price))
    cost = quantity * price
    name = rng.choice(NAMES[language])
    prompt = {
        "en": f"{name} buys {quantity} {plural} at {price} dollars each and pays with a {bill}-dollar bill. "
        f"How many dollars of change does {name} get?",
        "zh": f"{name}买了{quantity}{measure}{noun}，每{measure}{price}元，付了一张{bill}元的钞票，应该找回多少元？",
    }[language]
    steps = [f"{quantity} × {price} = {cost}", f"{bill} − {cost} = {bill - cost}"]
    facts = {"quantity": quantity, "price": price, "bill": bill}
    return _record(prompt, steps, Fraction(bill - cost), facts, language)


def discount(rng: random.Random, language: str) -> dict:
    plural, measure, noun, price = _priced_item(rng)
    quantity, percent_off = rng.randint(2, 8), rng.choice(PERCENTS_OFF)
    cost = quantity * price
    paid = Fraction(cost * (100 - percent_off), 100)
    name = rng.choice(NAMES[language])
    prompt = {
        "en": f"A shop has {percent_off}% off everything. {name} buys {quantity} {plural} with a normal price "
        f"of {price} dollars each. How many dollars does that cost after the discount?",
        "zh": f"商店全场优惠{percent_off}%。{name}买了{quantity}{measure}{noun}，原价每{measure}{price}元，"
        "打折后一共要付多少元？",
    }[language]
    steps = [f"{quantity} × {price} = {cost}", f"{cost} × {100 - percent_off}% = {format_number(paid)}"]
    return _record(prompt, steps, paid, {"quantity": quantity, "price": price, "percent_off": percent_off}, language)


def split_bill(rng: random.Random, language: str) -> dict:
    people = rng.randint(2, 6)
    share = rng.randint(8, 40)
    total = people * share
    food = rng.randint(total // 3, total - 5)
    drinks = total - food
    prompt = {
        "en": f"{people} friends eat out. The food costs {food} dollars and the drinks cost {drinks} dollars. "
        "They split the bill equally. How many dollars does each friend pay?",
        "zh": f"{people}个朋友一起吃饭，饭菜{food}元，饮料{drinks}元，大家平均分摊，每人要付多少元？",
    }[language]
    steps = [f"{food} + {drinks} = {total}", f"{total} ÷ {people} = {share}"]
    return _record(prompt, steps, Fraction(share), {"food": food, "drinks": drinks, "people": people}, language)


def price_per_kg(rng: random.Random, language: str) -> dict:
    english, chinese, cheapest, dearest = rng.choice(PRODUCE)
    price = rng.randint(cheapest, dearest)
    kilograms = Fraction(rng.randint(1, 9), 2)
    cost = kilograms * price
    weight = format_number(kilograms)
    prompt = {
        "en": f"The price of {english} is {price} dollars per kilogram. "
        f"How many dollars do {weight} kilograms of {english} cost?",
        "zh": f"{chinese}每千克{price}元，买{weight}千克{chinese}要多少元？",
    }[language]
    steps = [f"{weight} × {price} = {format_number(cost)}"]
    return _record(prompt, steps, cost, {"kilograms": as_json_number(kilograms), "price_per_kg": price}, language)


def buy_some_get_one_free(rng: random.Random, language: str) -> dict:
    plural, measure, noun, price = _priced_item(rng)
    paid_per_group = rng.randint(2, 4)
    group = paid_per_group + 1
    quantity = rng.randint(group + 1, 4 * group)
    free = quantity // group
    paid_items = quantity - free
    prompt = {
        "en": f"{plural.capitalize()} cost {price} dollars each, and for every {group} you take you only pay "
        f"for {paid_per_group}. How many dollars do {quantity} {plural} cost?",
        "zh": f"{noun}每{measure}{price}元，店里搞活动：每拿{group}{measure}只需付{paid_per_group}{measure}的钱。"
        f"买{quantity}{measure}{noun}要付多少元？",
    }[language]
    steps = [
        {
            "en": f"{quantity} ÷ {group} = {free} remainder {quantity % group}, so {free} are free",
            "zh": f"{quantity} ÷ {group} = {free} 余 {quantity % group}，所以有{free}{measure}免费",
        }[language],
        f"{quantity} − {free} = {paid_items}",
        f"{paid_items} × {price} = {paid_items * price}",
    ]
    facts = {"quantity": quantity, "group": group, "paid_per_group": paid_per_group, "price": price}
    return _record(prompt, steps, Fraction(paid_items * price), facts, language)


def savings_left(rng: random.Random, language: str) -> dict:
    weekly, weeks = rng.randint(5, 30), rng.randint(3, 12)
    saved = weekly * weeks
    cost = rng.randint(saved // 3, saved - 1)
    name = rng.choice(NAMES[language])
    prompt = {
        "en": f"{name} saves {weekly} dollars every week for {weeks} weeks, then buys a bike helmet for "
        f"{cost} dollars. How many dollars are left?",
        "zh": f"{name}每周存{weekly}元，存了{weeks}周，然后花{cost}元买了一个书包，还剩多少元？",
    }[language]
    steps = [f"{weekly} × {weeks} = {saved}", f"{saved} − {cost} = {saved - cost}"]
    return _record(prompt, steps, Fraction(saved - cost), {"weekly": weekly, "weeks": weeks, "cost": cost}, language)


MATH_KINDS = {
    "unit_price_plus_extra": unit_price_plus_extra,
    "two_items": two_items,
    "change_from_bill": change_from_bill,
    "discount": discount,
    "split_bill": split_bill,
    "price_per_kg": price_per_kg,
    "buy_some_get_one_free": buy_some_get_one_free,
    "savings_left": savings_left,
}
