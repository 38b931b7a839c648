"""Batches: TRL's collator for training examples, left-padded prompts for generation.

Labels are padded with -100 by TRL's collator (not derived from the pad token), which is what
keeps ``<|im_end|>`` trained when the pad token is ``<|im_end|>`` too, as in SmolLM2.
"""

from dataclasses import dataclass
from typing import Any

import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
from trl.trainer.utils import pad


def training_collator(pad_token_id: int) -> DataCollatorForLanguageModeling:
    """Dynamic right padding of ``input_ids`` / ``labels`` (-100) / ``attention_mask``."""
    return DataCollatorForLanguageModeling(pad_token_id=pad_token_id)


@dataclass
class PromptCollator:
    """Left-pads prompts so that generation continues every row from its last real token."""

    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        prompts = [torch.tensor(example["prompt_ids"]) for example in examples]
        return {
            "input_ids": pad(prompts, padding_value=self.pad_token_id, padding_side="left"),  # (batch, seq)
            "attention_mask": pad([torch.ones_like(p) for p in prompts], padding_value=0, padding_side="left"),
            "ids": [example["id"] for example in examples],
            "types": [example["type"] for example in examples],
            "row_index": torch.tensor([example["row_index"] for example in examples]),
        }
