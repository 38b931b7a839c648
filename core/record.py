"""The one shape every input record takes after it is read, whatever its file's format.

``datamodules/normalize.py`` makes a ``Record`` once per line or row; after that no code reads raw
rows. Training tokenises ``messages``; predict and test prompt with ``prompt_messages``; scoring
(``sft test``, ``sft score``, validation answers, ``sft report``) compares answers with
``reference``. Errors point back to ``source`` and ``location``.

>>> record = Record(id="0", type="qa", metric="squad", source="qa.json", location="record 1",
...                 messages=[{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
...                 prompt_messages=[{"role": "user", "content": "2+2?"}], reference=Reference(answers=("4",)))
>>> record.labelled
True
"""

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

Message = dict[str, Any]
"""``role`` and ``content``; assistant turns may add ``tool_calls`` and ``reasoning_content``, tool turns
``tool_call_id`` and ``name`` (all given to the chat template as they are)."""

QuestionType = Literal["choice", "code-generate", "generic-generate", "math", "qa", "think"]
"""What a record asks for: it picks the generation settings and, by default, the metric."""
QUESTION_TYPES: tuple[str, ...] = get_args(QuestionType)

Metric = Literal["choice", "code", "math", "rouge", "squad", "think"]
"""How an answer is scored: letter accuracy, pass@k, math-verify accuracy, ROUGE + exact match,
SQuAD EM/F1, or ROUGE + exact match on the text after ``</think>``."""
METRICS: tuple[str, ...] = get_args(Metric)

DEFAULT_METRIC: dict[str, str] = {
    "choice": "choice",
    "code-generate": "code",
    "generic-generate": "rouge",
    "math": "math",
    "qa": "squad",
    "think": "think",
}


@dataclass(frozen=True)
class CodeTest:
    """A HumanEval-style problem: the function's prompt, a ``check(candidate)`` test, its name."""

    prompt: str
    test: str
    entry_point: str


@dataclass(frozen=True)
class Reference:
    """What an answer is scored against; empty for an unlabelled record."""

    answers: tuple[str, ...] = ()
    """Acceptable reference texts (a worked solution for maths, the text after ``</think>`` for think)."""
    final_answer: str | None = None
    """Maths: the final answer as the file gives it (else the last ``\\boxed{}`` of ``answers[0]``)."""
    choices: dict[str, str] = field(default_factory=dict)
    """Choice questions: option letter → option text."""
    gold_letter: str | None = None
    code: CodeTest | None = None


@dataclass(frozen=True)
class Record:
    id: str
    """The file's own id, else the record's position (0-based): every answer file is keyed by it."""
    type: str
    metric: str
    messages: list[Message]
    """The whole conversation; it ends with the answer when the record is labelled."""
    prompt_messages: list[Message]
    """The messages the model answers: the conversation without its last assistant turn."""
    reference: Reference
    source: str
    location: str
    """Where a person finds the record: ``line 7`` (JSON Lines, CSV) or ``record 3`` (JSON list, parquet)."""
    tools: list[dict] | None = None
    """Tool (function) schemas the conversation may call, given to the chat template (``messages``, ``sharegpt``)."""

    @property
    def labelled(self) -> bool:
        reference = self.reference
        return bool(reference.answers or reference.final_answer or reference.gold_letter or reference.code)

    @property
    def num_choices(self) -> int:
        return len(self.reference.choices)

    @property
    def choice_label(self) -> int:
        """The gold option's index (A = 0), or -1 where none is known."""
        letters = sorted(self.reference.choices)
        return letters.index(self.reference.gold_letter) if self.reference.gold_letter in letters else -1
