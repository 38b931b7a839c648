"""Trained-token counts per optimizer step, so the loss is a mean over the whole step.

Averaging the loss per micro-batch and then over micro-batches weights a short answer's tokens
more than a long one's; the right loss divides the summed token losses of all micro-batches of an
optimizer step by the number of trained tokens in all of them. That number is only known once
every micro-batch of the step has been seen, so this wrapper reads ahead one accumulation window
and stamps each batch with ``step_trained_tokens``.
"""

from collections.abc import Iterable, Iterator
from typing import Any

import torch

IGNORE_INDEX = -100


def trained_tokens_in(batch: dict[str, Any]) -> int:
    """Labels that reach the loss: after the causal shift, position 0 is never a target."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


class StepTokenCounts(Iterable):
    """Wraps a training dataloader; each batch gets the trained-token count of its optimizer step."""

    def __init__(self, dataloader: Iterable, accumulate_grad_batches: int):
        self.dataloader = dataloader
        self.accumulate_grad_batches = max(1, int(accumulate_grad_batches))

    def __len__(self) -> int:
        return len(self.dataloader)

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
        step_tokens = torch.tensor(sum(trained_tokens_in(batch) for batch in window))
        for batch in window:
            batch["step_trained_tokens"] = step_tokens
            yield batch
