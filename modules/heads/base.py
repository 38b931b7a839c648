"""What every head provides, and the pieces heads share."""

from dataclasses import dataclass

import torch
from torch import nn

from core.batch_layout import example_rows
from modules.generation.decoding import mask_positions
from modules.generation.plan import GenerationPlan, generate_for_rows


@dataclass
class EvalValue:
    """A mean (a loss, an accuracy) and how many items it is a mean over, for weighted averaging."""

    value: torch.Tensor
    count: int


class Head(nn.Module):
    """A head turns backbone outputs into (1) training losses, (2) evaluation values, (3) answers."""

    def setup(self, model: nn.Module, tokenizer) -> None:
        """Called once the backbone is loaded: build parameters that depend on it."""

    def training_loss(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """``{"loss": ..., parts...}``; each a sum over this micro-batch divided by the step's total."""
        raise NotImplementedError

    def evaluation(self, model: nn.Module, batch: dict) -> dict[str, EvalValue]:
        """``{"loss": ..., other values...}`` for validation and test."""
        raise NotImplementedError

    def predict(self, model: nn.Module, tokenizer, batch: dict, plan: GenerationPlan) -> list[str | list[str]]:
        """One answer per row (a list of samples where the plan asks for several)."""
        return generate_for_rows(model, tokenizer, batch, plan, rows=list(range(len(batch["ids"]))))


def prompt_forward(model: nn.Module, batch: dict, hidden: bool = False):
    """One pass over the left-padded prompts; the last position is each prompt's end.

    Position ids count real tokens only, so a left-padded row is encoded exactly as it would be
    alone (what ``generate`` does too); the default ``arange`` would shift them by the padding.
    Only the last position's logits are computed: (batch, 1, vocab).
    """
    attention_mask = batch["prompt_attention_mask"]
    position_ids = mask_positions(attention_mask)
    return model(input_ids=batch["prompt_ids"], attention_mask=attention_mask, position_ids=position_ids,
                 output_hidden_states=hidden, logits_to_keep=1, use_cache=False)


def at_answer_positions(per_token: torch.Tensor, batch: dict, input_length: int) -> torch.Tensor:
    """``per_token`` (rows, seq, dim) at each example's ``answer_position`` → (examples, dim).

    Prompt-learning PEFT methods prepend virtual tokens; the offset skips them. In a packed batch
    every example is in row 0 and its answer position indexes that row (``core.batch_layout``).
    """
    offset = per_token.shape[1] - input_length
    rows = example_rows(batch).to(per_token.device)
    return per_token[rows, batch["answer_position"].to(per_token.device) + offset]
