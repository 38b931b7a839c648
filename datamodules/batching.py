"""Length-grouped batches: similar lengths share a batch, so little compute goes to padding.

Within each window of ``batch_size * window_batches`` shuffled examples, examples are sorted by
length and cut into batches; the batches are then shuffled, so the epoch does not run from the
longest examples to the shortest (transformers' LengthGroupedSampler puts the longest first and
keeps the rest in length order, which with one window means one question type after another).
"""

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class LengthGroupedBatchSampler(Sampler[list[int]]):
    def __init__(self, lengths: list[int], batch_size: int, window_batches: int = 50):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.window = batch_size * window_batches

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(len(self.lengths)).tolist()  # follows the seed Lightning sets
        batches = []
        for start in range(0, len(order), self.window):
            window = sorted(order[start : start + self.window], key=lambda i: self.lengths[i], reverse=True)
            batches += [window[i : i + self.batch_size] for i in range(0, len(window), self.batch_size)]
        for position in torch.randperm(len(batches)).tolist():
            yield batches[position]


class TypeGroupedBatchSampler(Sampler[list[int]]):
    """Evaluation batches holding one question type each, in input order within a type.

    Generation settings differ per type, so a mixed batch needs one ``generate`` call per type;
    on a CPU, one call over 8 rows costs about as much as one over 2 (reading the weights
    dominates), so grouping cuts generation time several-fold. Answers are put back in input
    order afterwards by their row index.

    >>> list(TypeGroupedBatchSampler(["a", "b", "a", "a"], 2))
    [[0, 2], [3], [1]]
    """

    def __init__(self, record_types: list[str], batch_size: int):
        self.record_types = list(record_types)
        self.batch_size = batch_size
        rows_by_type: dict[str, list[int]] = {}
        for row, record_type in enumerate(self.record_types):
            rows_by_type.setdefault(record_type, []).append(row)
        self.batches = [rows[i : i + batch_size] for rows in rows_by_type.values()
                        for i in range(0, len(rows), batch_size)]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)
