"""Batches: TRL's collator for training examples, left-padded prompts for generation.

Labels are padded with -100 by TRL's collator (not derived from the pad token), which is what
keeps ``<|im_end|>`` trained when the pad token is ``<|im_end|>`` too, as in SmolLM2.

Both batch kinds also carry what the heads need: whether a row is a choice question, its number
of options and gold option (-1 if unknown), and ``answer_position``, the index of the last prompt
token, where the answer is predicted. Training batches also carry left-padded ``prompt_ids`` cut
from the same tokens, so ``sft test`` generates from exactly the prompt the loss was computed on.
"""

from dataclasses import dataclass
from typing import Any

import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
from trl.trainer.utils import pad


def _left_padded(sequences: list[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    tensors = [torch.tensor(ids) for ids in sequences]
    return {
        "input_ids": pad(tensors, padding_value=pad_token_id, padding_side="left"),  # (batch, seq)
        "attention_mask": pad([torch.ones_like(t) for t in tensors], padding_value=0, padding_side="left"),
    }


def _head_fields(examples: list[dict[str, Any]]) -> dict[str, Any]:
    types = [example["record_type"] for example in examples]
    return {
        "ids": [example["id"] for example in examples],
        "types": types,
        "is_choice": torch.tensor([t == "choice" for t in types]),
        "num_choices": torch.tensor([example.get("num_choices", 0) for example in examples]),
        "choice_label": torch.tensor([example.get("choice_label", -1) for example in examples]),
        "row_index": torch.tensor([example["row_index"] for example in examples]),
    }


@dataclass
class TrainingCollator:
    """Right-padded ``input_ids`` / ``labels`` (-100) / ``attention_mask`` plus the head fields."""

    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = DataCollatorForLanguageModeling(pad_token_id=self.pad_token_id)(examples)
        batch["answer_position"] = torch.tensor([example["answer_position"] for example in examples])
        prompts = [example["input_ids"][: example["answer_position"] + 1] for example in examples]
        prompt_batch = _left_padded(prompts, self.pad_token_id)
        batch["prompt_ids"], batch["prompt_attention_mask"] = prompt_batch["input_ids"], prompt_batch["attention_mask"]
        return {**batch, **_head_fields(examples)}


def training_collator(pad_token_id: int) -> TrainingCollator:
    return TrainingCollator(pad_token_id)


@dataclass
class PromptCollator:
    """Left-pads prompts so that generation continues every row from its last real token."""

    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = _left_padded([example["prompt_ids"] for example in examples], self.pad_token_id)
        batch["prompt_ids"], batch["prompt_attention_mask"] = batch["input_ids"], batch["attention_mask"]
        batch["answer_position"] = torch.full((len(examples),), batch["input_ids"].shape[1] - 1)
        return {**batch, **_head_fields(examples)}
