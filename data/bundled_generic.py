"""Open questions with one short, exactly checkable answer: word games, calendars, sorting, counting.

The answer is the bare string a grader compares with (``"nedrag"``, ``"星期二"``, ``"3, 7, 19, 42"``).
``facts`` keeps the inputs (the word, the start day and offset, the list) so the tests can recompute
the answer with their own code instead of trusting these tables.

>>> import random
>>> weekday_offset(random.Random(3), "zh")["answer"] in WEEKDAYS["zh"]
True
"""

import random

WEEKDAYS = {
    "en": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "zh": ["星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日"],
}
MONTHS = {
    "en": ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"],
    "zh": ["一月", "二月", "三月", "四月", "五月", "六月", "七月", "八月", "九月", "十月", "十一月", "十二月"],
}
# Regular and irregular nouns mixed on purpose: the irregular ones are what make the question worth asking.
PLURALS = {
    "mouse": "mice", "child": "children", "tooth": "teeth", "foot": "feet", "person": "people", "man": "men",
    "woman": "women", "goose": "geese", "sheep": "sheep", "fish": "fish", "knife": "knives", "leaf": "leaves",
    "wolf": "wolves", "cactus": "cacti", "box": "boxes", "bus": "buses", "church": "churches", "dish": "dishes",
    "baby": "babies", "city": "cities", "party": "parties", "toy": "toys", "day": "days", "book": "books",
    "tomato": "tomatoes", "potato": "potatoes", "hero": "heroes", "photo": "photos", "piano": "pianos",
}
WORDS = [
    "garden", "planet", "window", "kitchen", "blanket", "elephant", "mountain", "computer", "river",
    "yellow", "summer", "pencil", "rabbit", "bottle", "travel", "silver", "forest", "candle", "market",
]
ADJECTIVES = ["green", "quiet", "happy", "small", "bright", "cold", "sweet", "early", "old", "fast"]
NOUNS = ["tea", "river", "morning", "garden", "train", "city", "song", "window", "dog", "bridge"]
SENTENCE_PARTS = {
    "subject": ["the cat", "my brother", "a small dog", "the old teacher", "our neighbor", "the children"],
    "verb": ["found", "painted", "carried", "watched", "cleaned", "lost"],
    "object": ["a red ball", "the big box", "two books", "the garden gate", "an old map", "the kitchen table"],
    "place": ["", "in the park", "after lunch", "near the river", "on Sunday morning", "at school"],
}
SORT_ORDERS = ("ascending", "descending")


def reverse_word(rng: random.Random, language: str) -> dict:
    word = rng.choice(WORDS)
    prompt = {"en": f"Write the word '{word}' backwards.", "zh": f"把英文单词“{word}”倒过来写。"}[language]
    return {"prompt": prompt, "answer": word[::-1], "facts": {"word": word}}


def plural(rng: random.Random, language: str) -> dict:
    singular = rng.choice(sorted(PLURALS))
    prompt = {
        "en": f"What is the plural of the English noun '{singular}'?",
        "zh": f"英文名词“{singular}”的复数形式是什么？",
    }[language]
    return {"prompt": prompt, "answer": PLURALS[singular], "facts": {"singular": singular}}


def weekday_offset(rng: random.Random, language: str) -> dict:
    start, days = rng.randrange(7), rng.randint(1, 6)
    direction = rng.choice(["after", "before"])
    answer = WEEKDAYS[language][(start + days if direction == "after" else start - days) % 7]
    start_name = WEEKDAYS[language][start]
    if language == "en":
        prompt = f"What day of the week is {days} day{'s' if days > 1 else ''} {direction} {start_name}?"
    else:
        prompt = f"{start_name}的{'后' if direction == 'after' else '前'}{days}天是星期几？"
    return {"prompt": prompt, "answer": answer, "facts": {"start": start_name, "days": days, "direction": direction}}


def month_offset(rng: random.Random, language: str) -> dict:
    start, months = rng.randrange(12), rng.randint(1, 11)
    start_name = MONTHS[language][start]
    answer = MONTHS[language][(start + months) % 12]
    prompt = {
        "en": f"Which month comes {months} month{'s' if months > 1 else ''} after {start_name}?",
        "zh": f"{start_name}之后再过{months}个月是几月？",
    }[language]
    return {"prompt": prompt, "answer": answer, "facts": {"start": start_name, "months": months}}


def uppercase(rng: random.Random, language: str) -> dict:
    phrase = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    prompt = {
        "en": f"Rewrite the phrase '{phrase}' in capital letters.",
        "zh": f"把短语“{phrase}”全部改写成大写字母。",
    }[language]
    return {"prompt": prompt, "answer": phrase.upper(), "facts": {"phrase": phrase}}


def count_letter(rng: random.Random, language: str) -> dict:
    """The letter asked about is drawn from the word, so the answer is at least 1."""
    word = rng.choice(WORDS + sorted(PLURALS))
    letter = rng.choice(sorted(set(word)))
    prompt = {
        "en": f"How many times does the letter '{letter}' appear in the word '{word}'?",
        "zh": f"字母“{letter}”在单词“{word}”中出现了几次？",
    }[language]
    return {"prompt": prompt, "answer": str(word.count(letter)), "facts": {"word": word, "letter": letter}}


def count_words(rng: random.Random, language: str) -> dict:
    parts = [rng.choice(SENTENCE_PARTS[part]) for part in ("subject", "verb", "object", "place")]
    words = " ".join(part for part in parts if part)
    sentence = words[0].upper() + words[1:] + "."
    prompt = {
        "en": f'How many words are in the sentence "{sentence}"?',
        "zh": f"英文句子“{sentence}”一共有几个单词？",
    }[language]
    return {"prompt": prompt, "answer": str(len(sentence.split())), "facts": {"sentence": sentence}}


def sort_numbers(rng: random.Random, language: str) -> dict:
    numbers = rng.sample(range(1, 100), rng.randint(4, 6))
    order = rng.choice(SORT_ORDERS)
    listed = ", ".join(map(str, numbers))
    prompt = {
        ("en", "ascending"): f"Sort these numbers from smallest to largest: {listed}",
        ("en", "descending"): f"Sort these numbers from largest to smallest: {listed}",
        ("zh", "ascending"): f"把这些数从小到大排列：{listed}",
        ("zh", "descending"): f"把这些数从大到小排列：{listed}",
    }[(language, order)]
    answer = ", ".join(map(str, sorted(numbers, reverse=order == "descending")))
    return {"prompt": prompt, "answer": answer, "facts": {"numbers": numbers, "order": order}}


GENERIC_KINDS = {
    "reverse_word": reverse_word,
    "plural": plural,
    "weekday_offset": weekday_offset,
    "month_offset": month_offset,
    "uppercase": uppercase,
    "count_letter": count_letter,
    "count_words": count_words,
    "sort_numbers": sort_numbers,
}
