"""Record datasets → token datasets: a dataset goes in, a dataset and its statistics come out.

Training examples carry ``input_ids`` and ``labels``; an example cut by ``max_length`` is counted,
and one left with no trained token is dropped and counted, so it can never reach the loss.
Prompt examples (for generation) carry ``prompt_ids`` rendered by the same chat-template code.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np

from datamodules.choice_fields import NO_LABEL, answer_position, choice_fields
from datamodules.chat_tokens import count_trained, prompt_ids_for_generation, tokenize_conversation, truncate
from core.errors import MissingFieldError
from datamodules.formats import split_prompt, to_messages
from core.errors import RecordError
from datamodules.records import RowLocator


@dataclass(frozen=True)
class ConversationSpec:
    """How records of one dataset become conversations."""

    record_format: str = "typed"
    renames: Mapping[str, str] = field(default_factory=dict)
    system_prompt: str | None = None
    train_on: str = "all_assistant"

    def messages(self, record: Mapping[str, Any], locator: RowLocator, row_index: int) -> list[dict]:
        try:
            return to_messages(record, self.record_format, self.renames, self.system_prompt)
        except MissingFieldError as error:
            raise RecordError(locator.source, locator.describe(row_index), str(error)) from None

    def head_fields(self, record: Mapping[str, Any], locator: RowLocator, row_index: int) -> dict:
        """Question type and choice options/label (typed records only)."""
        if self.record_format != "typed":
            return {"record_type": "", "num_choices": 0, "choice_label": NO_LABEL}
        try:
            return choice_fields(record, self.renames)
        except MissingFieldError as error:
            raise RecordError(locator.source, locator.describe(row_index), str(error)) from None


@dataclass
class TokenStats:
    """What preprocessing did to a split, for the log and for tests."""

    records: int
    kept: int
    truncated: int
    dropped_no_trained_tokens: int
    length_min: int = 0
    length_mean: float = 0.0
    length_p95: int = 0
    length_max: int = 0
    trained_tokens: int = 0

    def summary(self, split: str) -> str:
        return (
            f"[{split}] {self.records} records -> {self.kept} examples; truncated {self.truncated}, "
            f"dropped (no trained token) {self.dropped_no_trained_tokens}; tokens/example "
            f"min {self.length_min} mean {self.length_mean:.0f} p95 {self.length_p95} max {self.length_max}; "
            f"trained tokens {self.trained_tokens}"
        )


def record_id(record, row_index: int, spec: ConversationSpec) -> str:
    """The record's ``id`` field (renamable), else its row number: answers are keyed by it."""
    value = record.get(spec.renames.get("id", "id"))
    return str(value) if value is not None else str(row_index)


def _training_row(record, row_index, tokenizer, spec: ConversationSpec, max_length, locator):
    messages = spec.messages(record, locator, row_index)
    if not any(message["role"] == "assistant" for message in messages):
        raise RecordError(locator.source, locator.describe(row_index), "no answer to train on")
    example, was_truncated = truncate(tokenize_conversation(tokenizer, messages, spec.train_on), max_length)
    return {
        **example,
        **spec.head_fields(record, locator, row_index),
        "answer_position": answer_position(example["labels"]),
        "n_trained": count_trained(example["labels"]),
        "truncated": was_truncated,
        "id": record_id(record, row_index, spec),
        "row_index": row_index,
    }


def build_training_examples(
    records: datasets.Dataset, tokenizer: Any, spec: ConversationSpec, max_length: int | None, source: str
) -> tuple[datasets.Dataset, TokenStats]:
    """Tokenize and mask every record; drop those with nothing left to train."""
    locator = RowLocator(source)
    tokenized = records.map(
        _training_row,
        with_indices=True,
        fn_kwargs={"tokenizer": tokenizer, "spec": spec, "max_length": max_length, "locator": locator},
        remove_columns=records.column_names,
        keep_in_memory=True,
        desc=f"Tokenizing {source}",
    )
    kept = tokenized.filter(lambda n_trained: n_trained > 0, input_columns="n_trained", keep_in_memory=True)
    return kept, _stats(tokenized, kept)


def _stats(tokenized: datasets.Dataset, kept: datasets.Dataset) -> TokenStats:
    lengths = np.array([len(ids) for ids in kept["input_ids"]] or [0])
    return TokenStats(
        records=len(tokenized),
        kept=len(kept),
        truncated=int(sum(tokenized["truncated"])),
        dropped_no_trained_tokens=len(tokenized) - len(kept),
        length_min=int(lengths.min()),
        length_mean=float(lengths.mean()),
        length_p95=int(np.percentile(lengths, 95)),
        length_max=int(lengths.max()),
        trained_tokens=int(sum(kept["n_trained"])),
    )


def _prompt_row(record, row_index, tokenizer, spec: ConversationSpec, locator):
    messages = split_prompt(spec.messages(record, locator, row_index))
    return {
        "prompt_ids": prompt_ids_for_generation(tokenizer, messages),
        "id": record_id(record, row_index, spec),
        **spec.head_fields(record, locator, row_index),
        "row_index": row_index,
    }


def build_prompt_examples(
    records: datasets.Dataset, tokenizer: Any, spec: ConversationSpec, source: str
) -> datasets.Dataset:
    """Prompts to generate from, in input order, each with its record id and question type."""
    fn_kwargs = {"tokenizer": tokenizer, "spec": spec, "locator": RowLocator(source)}
    return records.map(
        _prompt_row,
        with_indices=True,
        fn_kwargs=fn_kwargs,
        remove_columns=records.column_names,
        keep_in_memory=True,
        desc=f"Rendering prompts of {source}",
    )
