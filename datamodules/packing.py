"""Padding-free batches and micro-batches cut by a token budget instead of a row count.

Padding-free (``data.padding_free``): the examples of a micro-batch are put end to end in one row
by TRL's collator (``padding_free=True``): ``position_ids`` restart at 0 for each example, there is
no ``attention_mask``, and each example's first label is -100, so no loss crosses a boundary (the
last token of one example never predicts the first of the next). The attention kernel keeps each
example to itself: flash attention's varlen path from ``cu_seq_lens_q/k``, SDPA and eager from a
block-diagonal mask that transformers builds when it sees ``position_ids`` restart with no
``attention_mask`` (masking_utils' find_packed_sequence_indices). The head fields stay one per
example; ``answer_position`` becomes an index into the one row (``core.batch_layout``).

>>> batch = PackedCollator(pad_token_id=0)([
...     {"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "answer_position": 1, "id": "a", "record_type": "qa",
...      "row_index": 0},
...     {"input_ids": [4, 5], "labels": [4, 5], "answer_position": 0, "id": "b", "record_type": "qa", "row_index": 1}])
>>> batch["input_ids"].tolist(), batch["labels"].tolist(), batch["position_ids"].tolist()
([[1, 2, 3, 4, 5]], [[-100, 2, 3, -100, 5]], [[0, 1, 2, 0, 1]])
>>> batch["answer_position"].tolist()
[1, 3]

A token budget (``data.max_tokens_per_batch``): micro-batches hold as many examples as fit in the
budget (``TokenBudgetBatchSampler``), counted as the tokens the model runs over: the examples'
lengths added up when packed, rows × the longest row when padded.

>>> sampler = TokenBudgetBatchSampler([5, 3, 2, 4, 6], max_tokens=8, seed=0, packed=True)
>>> sorted(sorted(batch) for batch in sampler)
[[0, 1], [2, 4], [3]]
"""

from bisect import bisect_left, insort
from dataclasses import dataclass
from typing import Any

import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from datamodules.batching import EpochBatchSampler
from datamodules.collate import _head_fields


@dataclass
class PackedCollator:
    """One row of whole examples (TRL's padding-free collation) plus the head fields."""

    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        # input_ids, labels, position_ids (1, total); cu_seq_lens_q/k, max_length_q/k; seq_idx (1, total)
        batch = DataCollatorForLanguageModeling(pad_token_id=self.pad_token_id, padding_free=True)(examples)
        starts = batch["cu_seq_lens_q"][:-1].long()  # (examples,) where each example begins in the row
        batch["answer_position"] = starts + torch.tensor([example["answer_position"] for example in examples])
        return {**batch, **_head_fields(examples)}


class TokenBudgetBatchSampler(EpochBatchSampler):
    """Micro-batches of at most ``max_tokens`` tokens (an example longer than that goes alone).

    The micro-batches are made once per seed and each epoch runs them in an order drawn from
    ``seed + epoch``, as TRL's ``pack_dataset`` packs once and the trainer shuffles the packed rows:
    the number of micro-batches per epoch stays fixed, which the schedule, the step-loss windows and
    the mid-epoch resume (``resume_position``) count on. Under data parallelism every rank takes
    every ``num_replicas``-th micro-batch, as in ``EpochBatchSampler``.

    Packed (padding-free) micro-batches are filled best-fit-decreasing: longest example first, each
    into the micro-batch with the least room that still fits it. Padded ones are cut from the
    examples sorted by length, so each holds similar lengths (length grouping comes with the budget).
    Equal lengths are ordered by the seed.
    """

    def __init__(self, lengths: list[int], max_tokens: int, seed: int, packed: bool, num_replicas: int = 1,
                 rank: int = 0):
        super().__init__(len(lengths), 1, seed, num_replicas, rank)
        self.lengths, self.max_tokens, self.packed = list(lengths), max_tokens, packed
        self._batches_of_seed: tuple[int, list[list[int]]] | None = None

    def budget_batches(self) -> list[list[int]]:
        """The micro-batches of the current seed (made once; a checkpoint may restore another seed)."""
        if self._batches_of_seed is None or self._batches_of_seed[0] != self.seed:
            order = torch.randperm(len(self.lengths), generator=torch.Generator().manual_seed(self.seed)).tolist()
            order.sort(key=lambda i: self.lengths[i], reverse=True)  # stable: equal lengths in seeded order
            cut = best_fit_decreasing if self.packed else padded_cuts
            self._batches_of_seed = (self.seed, cut(order, self.lengths, self.max_tokens))
        return self._batches_of_seed[1]

    def __len__(self) -> int:
        return len(self.budget_batches()) // self.num_replicas

    def epoch_batches(self, generator: torch.Generator) -> list[list[int]]:
        batches = self.budget_batches()
        return [batches[position] for position in torch.randperm(len(batches), generator=generator).tolist()]


def best_fit_decreasing(longest_first: list[int], lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Examples (longest first) into micro-batches whose lengths add up to at most ``max_tokens``.

    >>> best_fit_decreasing([0, 1, 2, 3], [6, 5, 3, 2], 8)
    [[0, 3], [1, 2]]
    """
    batches: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (tokens left, batch) of the batches with room, fewest first
    for example in longest_first:
        at = bisect_left(room, (lengths[example], -1))  # the tightest batch it fits in
        if at == len(room):
            batches.append([example])
            left, batch = max_tokens - lengths[example], len(batches) - 1
        else:
            left, batch = room.pop(at)
            batches[batch].append(example)
            left -= lengths[example]
        if left > 0:
            insort(room, (left, batch))
    return batches


def padded_cuts(longest_first: list[int], lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Consecutive examples (longest first) while rows × the first (longest) row fit in ``max_tokens``.

    >>> padded_cuts([0, 1, 2, 3], [6, 5, 3, 2], 10)
    [[0], [1, 2], [3]]
    """
    batches: list[list[int]] = []
    for example in longest_first:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_tokens:
            batches[-1].append(example)
        else:
            batches.append([example])
    return batches
