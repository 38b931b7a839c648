"""Answer extraction and metric values, checked against numbers worked out by hand."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from evaluation.answer_extraction import (
    extract_choice_letter,
    extract_code_samples,
    extract_final_math_answer,
    normalize_text,
    rouge_normalize,
    rouge_tokenize,
)
from evaluation.metrics import (
    choice_accuracy,
    exact_match,
    math_accuracy,
    math_answers_match,
    rouge_scores,
    squad_scores,
)

OPTIONS = {"A", "B", "C", "D"}


@pytest.mark.parametrize(
    "reply, letter",
    [
        ("B", "B"),
        ("B.", "B"),
        ("The answer is B", "B"),
        ("答案：C", "C"),
        ("(C) 42", "C"),
        ("**D**", "D"),
        ("Answer: (A)", "A"),
        ("正确答案为 **B**。", "B"),
        ("答案是C选项", "C"),  # no word boundary between "C" and "选" in Unicode regexes
        ("Ｃ", "C"),  # full-width letter
        ("At first A looks right, but the answer is C.", "C"),  # the last cue wins
    ],
)
def test_choice_letter_is_found_in_each_form(reply, letter):
    assert extract_choice_letter(reply, OPTIONS) == letter


@pytest.mark.parametrize(
    "reply",
    ["E", "The answer is E", "A banana is yellow", "The answer is a banana", "Because it is larger", ""],
)
def test_choice_letter_not_among_options_or_absent_is_none(reply):
    assert extract_choice_letter(reply, OPTIONS) is None


def test_choice_accuracy_counts_none_as_wrong():
    assert choice_accuracy(["B", None, "A", "D"], ["B", "C", "C", "D"]) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "text, answer",
    [
        ("16 × 10 = 160, 160 − 110 = 50. \\boxed{50}", "50"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces kept whole
        ("First \\boxed{3}, corrected: \\boxed{4}", "4"),  # the last box
        ("\\boxed{44 \\text{ dollars}}", "44"),
        ("\\boxed{\\$44}", "44"),
        ("一共 52.8 元。", "52.8"),  # no box: the last number
        ("pages 10-12", "12"),  # a hyphen after a digit is not a minus sign
        ("x = -3", "-3"),
        ("no numbers here", ""),
    ],
)
def test_final_math_answer(text, answer):
    assert extract_final_math_answer(text) == answer


@pytest.mark.parametrize(
    "predicted, reference, equal",
    [
        ("\\frac{1}{2}", "0.5", True),
        ("0.5", "\\frac{1}{2}", True),
        ("44", "44.0", True),
        ("45", "44", False),
        ("", "44", False),
    ],
)
def test_math_answers_match(predicted, reference, equal):
    assert math_answers_match(predicted, reference) is equal


def test_math_accuracy_on_replies():
    replies = ["So it is \\boxed{44}.", "\\boxed{45}", "The total is 206 dollars", "\\boxed{\\frac{1}{2}}"]
    predicted = [extract_final_math_answer(reply) for reply in replies]
    assert math_accuracy(predicted, ["44", "44", "206", "0.5"]) == pytest.approx(0.75)


def test_math_verification_works_outside_the_main_thread():
    """math_verify's signal-based timeout raises in threads; the metric must switch it off there."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(math_answers_match, "\\frac{1}{2}", "0.5").result() is True


def test_rouge_by_hand():
    # unigrams: 5 of 6 shared (the ×2, cat, on, mat) → 5/6; bigrams: "the cat", "on the", "the mat"
    # of 5 → 3/5; longest common subsequence "the cat on the mat" → 5/6.
    scores = rouge_scores(["the cat sat on the mat"], ["the cat lay on the mat"])
    assert scores == pytest.approx({"rouge1": 5 / 6, "rouge2": 3 / 5, "rougeL": 5 / 6}, abs=1e-6)


def test_rouge_chinese_counts_characters():
    assert rouge_scores(["星期二"], ["星期二"]) == pytest.approx({"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0})
    # 星期三 vs 星期二: 2 of 3 characters, 1 of 2 bigrams (星期), LCS 星期.
    partial = rouge_scores(["星期三"], ["星期二"])
    assert partial == pytest.approx({"rouge1": 2 / 3, "rouge2": 1 / 2, "rougeL": 2 / 3}, abs=1e-6)


def test_rouge_tokens_keep_ascii_words_and_split_cjk():
    assert rouge_tokenize(rouge_normalize("Tuesday, 星期二!")) == ["tuesday", "星", "期", "二"]


def test_rouge_averages_over_pairs():
    scores = rouge_scores(["the cat sat on the mat", "星期二"], ["the cat lay on the mat", "星期二"])
    assert scores["rouge1"] == pytest.approx((5 / 6 + 1) / 2, abs=1e-6)


def test_exact_match_normalisation():
    assert normalize_text("  The   Mice. ") == "the mice"
    assert normalize_text("3, 7, 19") != normalize_text("3 7 19")  # inner punctuation is kept
    assert exact_match(["  MICE!", "星期二。", "nedrag", "geese"], ["mice", "星期二", "Nedrag", "mice"]) == 0.75


def test_squad_by_hand():
    # "eiffel tower in paris" vs "eiffel tower": precision 2/4, recall 2/2 → F1 2/3; against "the tower"
    # (→ "tower") F1 is 0.4, so the best answer counts. "Paris." vs "paris" is an exact match.
    scores = squad_scores(["Eiffel Tower in Paris", "Paris."], [["Eiffel Tower", "the tower"], ["paris"]])
    assert scores == pytest.approx({"exact_match": 0.5, "f1": (2 / 3 + 1) / 2}, abs=1e-6)


def test_code_content_becomes_a_list_of_samples():
    assert extract_code_samples("def f(): pass") == ["def f(): pass"]
    assert extract_code_samples(["a = 1", "a = 2"]) == ["a = 1", "a = 2"]
