"""Records → token datasets: records go in, a dataset and its statistics come out.

Training examples carry ``input_ids`` and ``labels``; an example cut by ``max_length`` is counted,
and one left with no trained token is dropped and counted, so it can never reach the loss.
Prompt examples (for generation) carry ``prompt_ids`` rendered by the same chat-template code.
Both carry what the heads need from the record: its id, type, number of options and gold option.
"""

import json
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np

from core.errors import RecordError
from core.record import Record
from datamodules.chat_tokens import answer_position, count_trained, prompt_ids_for_generation
from datamodules.parallel_map import map_rows, resolve_num_proc
from datamodules.truncation import fit_conversation


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


def _head_fields(record: Record, row_index: int) -> dict:
    return {"id": record.id, "record_type": record.type, "num_choices": record.num_choices,
            "choice_label": record.choice_label, "row_index": row_index}


def _records_dataset(records: list[Record], messages_of) -> datasets.Dataset:
    """One row per record: the conversation to render plus the head fields, in input order.

    The conversation travels as JSON text: arrow would give every message the keys of all others
    (``tool_calls: null`` on plain turns) and every tool-call argument object those of all others."""
    rows = [{"conversation": json.dumps({"messages": messages_of(record), "tools": record.tools}),
             **_head_fields(record, index)} for index, record in enumerate(records)]
    return datasets.Dataset.from_list(rows)


def _training_row(row, tokenizer, train_on: str, max_length: int | None, truncation: str):
    conversation = json.loads(row["conversation"])
    example, was_truncated = fit_conversation(tokenizer, conversation["messages"], train_on, conversation["tools"],
                                              max_length, truncation)
    return {
        **example,
        "answer_position": answer_position(example["labels"]),
        "n_trained": count_trained(example["labels"]),
        "truncated": was_truncated,
    }


def require_answers(records: list[Record]) -> None:
    """A record to train on (or to compute a test loss on) needs an assistant turn."""
    for record in records:
        if not any(message["role"] == "assistant" for message in record.messages):
            raise RecordError(record.source, record.location, f"no answer to train on (id '{record.id}')")


def build_training_examples(
    records: list[Record], tokenizer: Any, train_on: str, max_length: int | None, source: str,
    truncation: str = "keep_answer", num_proc: int | None = None,
) -> tuple[datasets.Dataset, TokenStats]:
    """Tokenize and mask every record, cut to ``max_length`` as ``truncation`` says
    (``datamodules/truncation.py``); drop those with nothing left to train. ``num_proc`` processes
    (None: ``parallel_map.resolve_num_proc``'s default) give the tokens of one."""
    require_answers(records)
    tokenized = map_rows(
        _records_dataset(records, lambda record: record.messages), _training_row,
        {"tokenizer": tokenizer, "train_on": train_on, "max_length": max_length, "truncation": truncation},
        resolve_num_proc(num_proc, len(records)), desc=f"Tokenizing {source}")
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


def _prompt_row(row, tokenizer):
    conversation = json.loads(row["conversation"])
    return {"prompt_ids": prompt_ids_for_generation(tokenizer, conversation["messages"], conversation["tools"])}


def build_prompt_examples(records: list[Record], tokenizer: Any, source: str,
                          num_proc: int | None = None) -> datasets.Dataset:
    """Prompts to generate from, in input order, each with its record id and question type."""
    return map_rows(_records_dataset(records, lambda record: record.prompt_messages), _prompt_row,
                    {"tokenizer": tokenizer}, resolve_num_proc(num_proc, len(records)),
                    desc=f"Rendering prompts of {source}")

def unanswered_test_records(path: str, records: list, examples, max_length: int) -> str:
    """The warning for test records left with no answer token within ``max_length``: ``sft test``
    neither answers nor scores them, so its metrics cover fewer records than the file holds."""
    kept = set(examples["id"])
    missing = [record.id for record in records if record.id not in kept]
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return (f"{path}: {len(missing)} test record(s) have no answer token within data.max_length {max_length} "
            f"(their prompt fills it) and are neither answered nor scored: {shown}. Raise data.max_length to "
            "test them.")

