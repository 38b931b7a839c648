"""The loss of an optimizer step, in one place: a mean over every trained token of the whole step.

Averaging the loss per micro-batch and then over micro-batches weights a short answer's tokens
more than a long one's; the right loss divides the summed token losses of all micro-batches of an
optimizer step, on every data-parallel rank, by the number of trained tokens in all of them.
Everything that agreement needs lives here, and nowhere else:

1. counting trained tokens (``trained_tokens_in``);
2. the step's divisors: that number is only known once every micro-batch of the step has been
   seen, so the training loader is wrapped (``StepTokenCounts``) to read ahead one accumulation
   window and stamp each batch with the step's totals;
3. the divisor a head divides its summed losses by (``step_divisor``);
4. the check, at every training step, that the window the loader read ahead is the trainer's
   accumulation (``check_window``): a ``GradientAccumulationScheduler`` changing it mid-run would
   otherwise give silently wrong losses;
5. undoing Lightning's own division by ``accumulate_grad_batches`` (``undo_accumulation_scaling``):
   each micro-batch's loss is already its share of the step's mean;
6. data parallelism (DDP, one process per device): each rank's loader stamps its own totals, so on
   the first micro-batch of every window all ranks add theirs up in one all-reduce
   (``summed_over_ranks``); each rank's loss is then its share of the mean over every rank's
   tokens, and DDP's averaging of gradients over ranks is undone (``undo_rank_averaging``), so a
   token weighs the same whichever rank trained it. The step's logged loss is the ranks' shares
   added up (``step_losses_over_ranks``). A run on W ranks with micro-batch b takes the same steps
   as one process accumulating W micro-batches of b (see ``datamodules.batching``).

The stamps:

- ``step_trained_tokens``: trained tokens of all rows (the LM head's divisor);
- ``step_lm_tokens``: trained tokens of the rows that are not choice questions (the multi head
  sends choice rows to the choice head, so their letters are not LM targets there);
- ``step_choice_records``: choice rows (the choice head's loss is a mean over records);
- ``step_tokens``: real (not padding) tokens of all rows, counted in ``tokens_seen``;
- ``step_window_capacity``: the accumulation the window was read ahead with;
- ``step_window_position``: the micro-batch's place in its window (0 first).

Lives in ``core`` because both sides need it: the data module wraps its loader, the heads divide.
"""

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from core.batch_layout import cells_of_examples, examples_in, real_tokens_in
from core.constants import IGNORE_INDEX

STEP_DIVISORS = ("step_trained_tokens", "step_lm_tokens", "step_choice_records")
STEP_TOTALS = (*STEP_DIVISORS, "step_tokens")  # what the ranks add up, in one all-reduce


class AccumulationMismatchError(RuntimeError):
    """The loader read ahead another window than the trainer accumulates over."""


def trained_tokens_in(batch: dict[str, Any], rows: torch.Tensor | None = None) -> int:
    """Labels that reach the loss (after the causal shift, position 0 is never a target), of all
    examples or of those True in ``rows`` (examples,); padded or packed (``core.batch_layout``)."""
    trained = batch["labels"][:, 1:] != IGNORE_INDEX
    if rows is not None:
        trained = trained & cells_of_examples(batch, rows)[:, 1:]
    return int(trained.sum())


def step_totals(window: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The divisors of one optimizer step's losses, summed over its micro-batches."""
    choice_rows = [batch.get("is_choice", torch.zeros(examples_in(batch), dtype=torch.bool)) for batch in window]
    return {
        "step_trained_tokens": torch.tensor(sum(trained_tokens_in(batch) for batch in window)),
        "step_lm_tokens": torch.tensor(sum(trained_tokens_in(b, ~rows) for b, rows in zip(window, choice_rows))),
        "step_choice_records": torch.tensor(sum(int(rows.sum()) for rows in choice_rows)),
        "step_tokens": torch.tensor(sum(real_tokens_in(batch) for batch in window)),
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

    def _stamped(self, window: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        totals = step_totals(window)
        for position, batch in enumerate(window):
            batch.update(totals, step_window_capacity=self.accumulate_grad_batches, step_window_position=position)
            yield batch


def step_divisor(batch: dict[str, Any], name: str) -> torch.Tensor:
    """The step total a summed loss is divided by (at least 1: a step may lack choice rows)."""
    if name not in STEP_DIVISORS:
        raise KeyError(f"'{name}' is not a step divisor: one of {STEP_DIVISORS}")
    return batch[name].clamp(min=1)


def check_window(batch: dict[str, Any], accumulate_grad_batches: int) -> None:
    """Stop before a wrong loss: the stamped totals cover ``step_window_capacity`` micro-batches."""
    capacity = int(batch["step_window_capacity"])
    if capacity != accumulate_grad_batches:
        raise AccumulationMismatchError(
            f"the training loader summed trained tokens over windows of {capacity} micro-batches but the trainer "
            f"accumulates {accumulate_grad_batches}: the loss would be wrong. Changing accumulate_grad_batches "
            "during a fit (GradientAccumulationScheduler) is not supported; set trainer.accumulate_grad_batches."
        )


def undo_accumulation_scaling(loss: torch.Tensor, accumulate_grad_batches: int) -> torch.Tensor:
    """Lightning divides each micro-batch's loss by ``accumulate_grad_batches``; ours is already its
    share of the step's mean, so it is multiplied back."""
    return loss * accumulate_grad_batches


# 6. Data parallelism ---------------------------------------------------------------------------
SumOverRanks = Callable[[torch.Tensor], torch.Tensor]  # e.g. strategy.reduce(tensor, reduce_op="sum")


def starts_window(batch: dict[str, Any]) -> bool:
    """The first micro-batch of its optimizer step's window (where the ranks add up their totals)."""
    return int(batch["step_window_position"]) == 0


def summed_over_ranks(batch: dict[str, Any], sum_over_ranks: SumOverRanks) -> dict[str, torch.Tensor]:
    """The window's stamped totals added up over every data-parallel rank, in one collective.

    Every rank must call this on the first micro-batch of every window (each rank takes as many
    micro-batches an epoch, so they do); with one process ``sum_over_ranks`` returns its input.
    """
    stacked = torch.stack([torch.as_tensor(batch[name]) for name in STEP_TOTALS])  # (totals,)
    return dict(zip(STEP_TOTALS, sum_over_ranks(stacked).unbind()))


def undo_rank_averaging(loss: torch.Tensor, world_size: int) -> torch.Tensor:
    """DDP averages gradients over ranks; each rank's loss is already its share of the mean over every
    rank's tokens, so the shares must add up: multiplied by the number of ranks."""
    return loss * world_size


def step_losses_over_ranks(step_losses: dict[str, torch.Tensor],
                           sum_over_ranks: SumOverRanks) -> dict[str, torch.Tensor]:
    """The step's losses over every rank: each rank holds its share of each mean, so they add up
    (one collective; every rank must call it at every optimizer step, with the same names)."""
    if not step_losses:
        return {}
    names = sorted(step_losses)
    stacked = torch.stack([step_losses[name].float() for name in names])  # (losses,)
    return dict(zip(names, sum_over_ranks(stacked).unbind()))


def evaluation_means_over_ranks(sums: dict[str, torch.Tensor], names: list[str], sum_over_ranks: SumOverRanks,
                                zeros: torch.Tensor) -> dict[str, torch.Tensor]:
    """Validation/test means over every rank's batches, each weighted by what it is a mean over.

    ``sums[name]`` is this rank's ``(sum of value × count, sum of count)``; ``names`` is the union of
    every rank's names (a rank may have met no choice record), so every rank reduces the same tensor,
    in one collective; ``zeros`` (2,) stands for a name this rank has not met (dtype and device of the
    sums). A name no rank counted anything for is left out, as one process leaves it out.

    >>> sums = {"loss": torch.tensor([6.0, 3.0])}  # e.g. 3 tokens, mean 2
    >>> evaluation_means_over_ranks(sums, ["accuracy", "loss"], lambda t: t * 2, torch.zeros(2))  # 2 like ranks
    {'loss': tensor(2.)}
    """
    if not names:
        return {}
    stacked = torch.stack([sums.get(name, zeros).to(zeros) for name in names])  # (names, 2)
    totals = sum_over_ranks(stacked)
    return {name: weighted / count for name, (weighted, count) in zip(names, totals.unbind()) if count > 0}
