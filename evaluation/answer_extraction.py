"""Pulling the answer out of generated text, one helper per question type.

A model rarely answers with the bare value: it says "The answer is B", "答案：C", or reasons for
a paragraph and then writes ``\\boxed{44}``. These helpers find the part that is scored, so the
metrics in ``metrics.py`` compare like with like. They are pure string functions: no model, no
files. (Code is the exception: ``code_execution.extract_code`` unwraps it where it is run.)

>>> extract_choice_letter("The answer is (B).", {"A", "B", "C", "D"})
'B'
>>> extract_final_math_answer("3 × 6 = 18, 20 − 18 = 2. \\\\boxed{2}")
'2'
"""

import re
import string
import unicodedata
from collections.abc import Collection

# Words that announce the chosen option, in English and Chinese ("选" alone covers "选C").
_CHOICE_CUE = r"(?:answer|option|choice|答案|选项|选择|选)"
_OPENERS = r"[\s*\"'“‘(\[【（]*"
# A capital letter that is not the start of a longer word ("Because", "Cat").
_LETTER = r"([A-Z])(?![A-Za-z])"
# "The answer is B", "Answer: (B)", "答案：C", "正确答案为 **C**", "选C".
_CUE_THEN_LETTER = re.compile(r"(?i:" + _CHOICE_CUE + r"\s*(?:is|为|是)?)\s*[:：]?" + _OPENERS + _LETTER)
# A reply that opens with the letter: "B", "B.", "(C) 42", "**D**", "A: 12". "A banana" does not count.
_LEADING_LETTER = re.compile(r"^" + _OPENERS + r"([A-Z])(?:$|\s*[.)\]】）:：、,*]|\s*$)")
# A letter in brackets anywhere: "... so I pick (C) ...".
_BRACKETED_LETTER = re.compile(r"[(\[【（]([A-Z])[)\]】）]")

_TRAILING_PUNCTUATION = string.punctuation + "。！？，、；：…"

# CJK ideographs and Japanese kana: scripts written without spaces, scored one character a token.
_CJK_CHARACTER = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff])")

_NUMBER = r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?"
_FRACTION = r"\\d?frac\{-?\d+\}\{-?\d+\}"
_LAST_NUMBER = re.compile(_FRACTION + "|" + _NUMBER)
# LaTeX wrappers and money signs that carry no value: "\text{44 元}", "\$44".
_LATEX_TEXT_WRAPPER = re.compile(r"\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}")
_NUMBER_WITH_UNIT = re.compile(r"^(" + _NUMBER + r")\s*[^\d\\{}^_=+\-*/()%]*$")


def extract_choice_letter(text: str, valid_letters: Collection[str]) -> str | None:
    """The option letter a reply chooses, or ``None`` if it names none of ``valid_letters``.

    Tried in order, so an explicit "the answer is C" wins over a letter that merely starts the
    reply: an answer cue (last one, as models restate themselves after reasoning), a reply that
    opens with a letter, then a bracketed letter. Full-width letters (``Ｃ``) count as ``C``. A
    letter that is not among the options (``E`` when there are A–D) gives ``None``: scored wrong.
    """
    text = unicodedata.normalize("NFKC", text).strip()
    cue_matches = _CUE_THEN_LETTER.findall(text)
    for candidates in (cue_matches[-1:], _LEADING_LETTER.findall(text), _BRACKETED_LETTER.findall(text)[-1:]):
        if candidates:
            letter = candidates[0].upper()
            return letter if letter in valid_letters else None
    return None


def _last_boxed_content(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``, with nested braces (``\\boxed{\\frac{1}{2}}``) kept whole."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, position = 0, start + len("\\boxed")
    for position in range(position, len(text)):
        depth += {"{": 1, "}": -1}.get(text[position], 0)
        if depth == 0:
            return text[start + len("\\boxed{") : position]
    return text[start + len("\\boxed{") :]  # unclosed: the generation was cut off


def _strip_units(answer: str) -> str:
    """``\\text{44 元}``, ``\\$44``, ``44 dollars`` → ``44``: math_verify would read the unit as a variable."""
    answer = _LATEX_TEXT_WRAPPER.sub(r" \1 ", answer)
    answer = answer.replace("\\$", "").replace("$", "").replace("\\,", "").replace("\\!", "").strip()
    number_with_unit = _NUMBER_WITH_UNIT.match(answer)
    return number_with_unit.group(1) if number_with_unit else answer


def extract_final_math_answer(text: str) -> str:
    """The final answer of a worked solution: the last ``\\boxed{}``, else the last number, else "".

    Units and ``\\text{}`` are removed (``\\boxed{44 \\text{ dollars}}`` → ``44``); the result is
    meant for ``math_verify.parse``, which then decides equivalence (``\\frac{1}{2}`` = ``0.5``).
    """
    boxed = _last_boxed_content(text)
    if boxed is not None:
        return _strip_units(boxed)
    numbers = _LAST_NUMBER.findall(text)
    return numbers[-1] if numbers else ""


def normalize_text(text: str) -> str:
    """Light normalisation for exact match: NFKC, case-fold, collapse whitespace, drop trailing punctuation.

    Only trailing punctuation goes: "3, 7, 19" must stay different from "3 7 19".

    >>> normalize_text("  The   Mice. ")
    'the mice'
    """
    text = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return text.rstrip(_TRAILING_PUNCTUATION).rstrip()


def rouge_normalize(text: str) -> str:
    """ROUGE's text normaliser that keeps Chinese: lower-case, spaces around each CJK character.

    torchmetrics' default keeps only ``[a-z0-9]`` and would turn every Chinese answer into
    nothing (ROUGE 0). Here punctuation becomes a space, ASCII words stay whole and each CJK
    character becomes its own token, the usual practice for Chinese ROUGE.

    >>> rouge_normalize("星期二, Tuesday!")
    ' 星 期 二 tuesday '
    """
    text = _CJK_CHARACTER.sub(r" \1 ", unicodedata.normalize("NFKC", text).lower())
    return re.sub(r"[\W_]+", " ", text)


def rouge_tokenize(normalized_text: str) -> list[str]:
    """Tokens of a ``rouge_normalize``d text: split on whitespace (CJK characters are already apart)."""
    return normalized_text.split()


def extract_code_samples(content: str | list[str]) -> list[str]:
    """The samples of a code answer as a list: a string is one sample.

    Markdown fences stay: ``code_execution.extract_code`` unwraps them where it builds the program,
    so there is one definition of "the code in a reply".
    """
    return [content] if isinstance(content, str) else list(content)


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def split_think(reply: str) -> tuple[str, bool]:
    """(the final answer, whether the think block was closed) of a reasoning reply.

    The answer is the text after the last ``</think>``; a reply that opened a think block and
    never closed it has no answer (it ran out of tokens, or never learned to stop); a reply
    without any think block is all answer.

    >>> split_think("<think>\\n2+2\\n</think>\\n\\nFour.")
    ('Four.', True)
    >>> split_think("<think>\\n2+2"), split_think("Four.")
    (('', False), ('Four.', False))
    """
    if THINK_CLOSE in reply:
        return reply.rsplit(THINK_CLOSE, 1)[1].strip(), True
    if THINK_OPEN in reply:
        return "", False
    return reply.strip(), False
