"""Reading-comprehension records, SQuAD-style: a short made-up paragraph, one question, a span of it.

A paragraph is one of three kinds (a person's life, a lake, a festival). Its facts are drawn first
and the paragraph is written around them; the question asks for one fact and the answer is that
fact's text exactly as the paragraph writes it. A draw whose answer text appears more than once in
its paragraph (a year that is also part of a number) is thrown away, so every answer is one span.

>>> import random
>>> record = person_record(random.Random(0), 0)
>>> record["answer"] in record["context"] and record["context"].count(record["answer"]) == 1
True
"""

import random

FIRST_NAMES = ["Ines", "Tomas", "Amara", "Kenji", "Lena", "Rafael", "Noor", "Oskar", "Priya", "Mateo",
               "Sofia", "Dmitri", "Hana", "Emeka", "Clara", "Yusuf", "Maren", "Luca", "Aiko", "Viktor"]
LAST_NAMES = ["Kovac", "Lindqvist", "Okafor", "Tanaka", "Moreau", "Haddad", "Silva", "Novak", "Brennan",
              "Castell", "Ivanova", "Mbeki", "Sato", "Fischer", "Quint", "Delgado", "Varga", "Holm"]
CITIES = ["Porto", "Tampere", "Leeds", "Graz", "Utrecht", "Gdansk", "Bergen", "Lyon", "Valencia", "Krakow",
          "Aarhus", "Bologna", "Ghent", "Brno", "Cork", "Malmo", "Turin", "Basel", "Seville", "Riga"]
UNIVERSITIES = ["University of Leeds", "University of Vienna", "Delft University", "University of Oslo",
                "Uppsala University", "University of Padua", "Charles University", "Trinity College"]
SUBJECTS = ["geology", "chemistry", "architecture", "mathematics", "medicine", "economics", "music",
            "marine biology", "linguistics", "civil engineering"]
COMPANY_WORDS = (["Northwind", "Bluefield", "Silverline", "Oakridge", "Harbor", "Redstone", "Clearwater"],
                 ["Labs", "Works", "Systems", "Foods", "Press", "Studios", "Instruments"])
BOOK_WORDS = (["The Quiet", "A Long", "The Last", "Winter", "The Hidden", "Under the"],
              ["Coast", "Road", "Harbour", "Orchard", "Lantern", "Bridge", "Valley"])
LAKE_SYLLABLES = (["Var", "Tel", "Ost", "Mir", "Kal", "Sor", "Bren", "Ild"], ["na", "vik", "ek", "ara", "mo", "un"])
DIRECTIONS = ["north", "south", "east", "west"]
FESTIVAL_WORDS = (["Harbour", "Lantern", "Spring", "Midsummer", "River", "Old Town", "Apple"],
                  ["Lights", "Music", "Food", "Film", "Folk", "Kite"])
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
MAX_DRAWS = 200


def _person_name(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def _two_words(rng: random.Random, words: tuple[list[str], list[str]], joiner: str = " ") -> str:
    return f"{rng.choice(words[0])}{joiner}{rng.choice(words[1])}"


def person_record(rng: random.Random, question_index: int) -> dict:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    name = f"{first} {last}"
    birthplace, home = rng.sample(CITIES, 2)
    birth_year = rng.randint(1935, 1975)
    birth_date = f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {birth_year}"
    founded = birth_year + rng.randint(25, 40)
    counted_in, employees = founded + rng.randint(8, 20), rng.randint(12, 900)
    book_year = birth_year + rng.randint(20, 24)
    company, book = _two_words(rng, COMPANY_WORDS), _two_words(rng, BOOK_WORDS)
    university, subject = rng.choice(UNIVERSITIES), rng.choice(SUBJECTS)
    context = (f"{name} was born in {birthplace} on {birth_date}. {last} studied {subject} at the {university} "
               f"and published a first book, {book}, in {book_year}. {last} later moved to {home} and founded "
               f"{company} there in {founded}. By {counted_in} the company employed {employees} people.")
    questions = [
        (f"Where was {name} born?", birthplace),
        (f"When was {name} born?", birth_date),
        (f"What did {name} study?", subject),
        (f"Which university did {name} attend?", university),
        (f"In which year did {name} found {company}?", str(founded)),
        (f"How many people did {company} employ by {counted_in}?", str(employees)),
        (f"What is the title of {name}'s first book?", book),
        (f"To which city did {name} move?", home),
    ]
    return _record(context, questions[question_index % len(questions)])


def lake_record(rng: random.Random, question_index: int) -> dict:
    lake = "Lake " + _two_words(rng, LAKE_SYLLABLES, joiner="")
    town = rng.choice(CITIES)
    direction = rng.choice(DIRECTIONS)
    distance, area, depth = rng.randint(3, 40), rng.randint(5, 300), rng.randint(8, 190)
    bridge_year, residents = rng.randint(1880, 1990), rng.randint(2, 60) * 100
    context = (f"{lake} lies {distance} kilometres {direction} of {town}. It covers {area} square kilometres "
               f"and is {depth} metres deep at its deepest point. The first bridge across it opened in "
               f"{bridge_year}, and about {residents} people live on its shores.")
    questions = [
        (f"How far from {town} is {lake}?", f"{distance} kilometres"),
        (f"In which direction from {town} does {lake} lie?", direction),
        (f"How large an area does {lake} cover?", f"{area} square kilometres"),
        (f"How deep is {lake} at its deepest point?", f"{depth} metres"),
        (f"When did the first bridge across {lake} open?", str(bridge_year)),
        (f"How many people live on the shores of {lake}?", str(residents)),
    ]
    return _record(context, questions[question_index % len(questions)])


def festival_record(rng: random.Random, question_index: int) -> dict:
    festival = f"{_two_words(rng, FESTIVAL_WORDS)} Festival"
    town, founder, month = rng.choice(CITIES), _person_name(rng), rng.choice(MONTHS)
    first_year = rng.randint(1950, 2005)
    days, visitors_year, visitors = rng.randint(2, 9), first_year + rng.randint(5, 15), rng.randint(11, 95) * 1000
    context = (f"The {festival} was first held in {town} in {first_year}, organised by {founder}. It takes "
               f"place every {month} and lasts {days} days. In {visitors_year} it drew {visitors:,} visitors.")
    questions = [
        (f"Where was the {festival} first held?", town),
        (f"In which year was the {festival} first held?", str(first_year)),
        (f"Who organised the first {festival}?", founder),
        (f"In which month does the {festival} take place?", month),
        (f"How many days does the {festival} last?", str(days)),
        (f"How many visitors did the {festival} draw in {visitors_year}?", f"{visitors:,}"),
    ]
    return _record(context, questions[question_index % len(questions)])


def _record(context: str, question_and_answer: tuple[str, str]) -> dict:
    question, answer = question_and_answer
    return {"context": context, "question": question, "answer": answer}


QA_KINDS = [person_record, lake_record, festival_record]


def qa_pool(rng: random.Random, count: int) -> list[dict]:
    """``count`` records cycling through the paragraph kinds and their questions; each answer is one
    span of its paragraph and no (paragraph, question) pair repeats."""
    records, seen = [], set()
    for index in range(count):
        kind = QA_KINDS[index % len(QA_KINDS)]
        question_index = index // len(QA_KINDS)
        for _ in range(MAX_DRAWS):
            record = kind(rng, question_index)
            key = (record["context"], record["question"])
            if record["context"].count(record["answer"]) == 1 and key not in seen:
                break
        else:
            raise RuntimeError(f"{kind.__name__} keeps repeating or hiding its answer: widen its ranges")
        seen.add(key)
        records.append(record)
    return records
