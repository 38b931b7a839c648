"""Trained-token counts per optimizer step, so the loss is a mean over the whole step.

Averaging the loss per micro-batch and then over micro-batches weights a short answer's tokens
more than a long one's; the right loss divides the summed token losses of all micro-batches of an
optimizer step by the number of trained tokens in all of them. That number is only known once
every micro-batch of the step has been seen, so this wrapper reads ahead one accumulation window
and stamps each batch with the step's totals:

- ``step_trained_tokens``: trained tokens of all rows (the LM head's divisor);
- ``step_lm_tokens``: trained tokens of the rows that are not choice questions (the multi head
  sends choice rows to the choice head, so their letters are not LM targets there);
- ``step_choice_records``: choice rows (the choice head's loss is a mean over records).
"""

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from core.constants import IGNORE_INDEX


def trained_tokens_in(batch: dict[str, Any], rows: torch.Tensor | None = None) -> int:
    """Labels that reach the loss (after the causal shift, position 0 is never a target)."""
    targets = batch["labels"][:, 1:] if rows is None else batch["labels"][rows, 1:]
    return int((targets != IGNORE_INDEX).sum())


def step_totals(window: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The divisors of one optimizer step's losses, summed over its micro-batches."""
    choice_rows = [batch.get("is_choice", torch.zeros(len(batch["labels"]), dtype=torch.bool)) for batch in window]
    return {
        "step_trained_tokens": torch.tensor(sum(trained_tokens_in(batch) for batch in window)),
        "step_lm_tokens": torch.tensor(sum(trained_tokens_in(b, ~rows) for b, rows in zip(window, choice_rows))),
        "step_choice_records": torch.tensor(sum(int(rows.sum()) for rows in choice_rows)),
    }


class StepTokenCounts(Iterable):
    """Wraps a training dataloader; each batch gets the trained-token count of its optimizer step."""

    def __init__(self, dataloader: Iterable, accumulate_grad_batches: int):
        self.dataloader = dataloader
        self.accumulate_grad_batches = max(1, int(accumulate_grad_batches))

    def __len__(self) -> int:
        return len(self.dataloader)

    # Lightning saves the state of a stateful train loader in checkpoints: the batch sampler's seed.
    def state_dict(self) -> dict:
        return self.dataloader.batch_sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.dataloader.batch_sampler.load_state_dict(state)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        window: list[dict[str, Any]] = []
        for batch in self.dataloader:
            window.append(batch)
            if len(window) == self.accumulate_grad_batches:
                yield from self._stamped(window)
                window = []
        yield from self._stamped(window)  # a shorter last window of the epoch

    @staticmethod
    def _stamped(window: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        totals = step_totals(window)
        for batch in window:
            batch.update(totals)
            yield batch
