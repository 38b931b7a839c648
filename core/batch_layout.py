"""Where each example of a training batch lies: a row of a padded batch, or a span of one packed row.

A padded batch is (examples, seq) with an ``attention_mask`` (1 on real tokens). A packed
(padding-free) batch is one row (1, total) holding the examples end to end, with ``position_ids``
restarting at 0 for each, no ``attention_mask`` (the kernel keeps attention inside each example),
and TRL's ``seq_idx`` (1, total): the example each token belongs to, and ``cu_seq_lens_q`` (the
examples' boundaries: 0, end of the first, ..., total).

The per-example head fields (``is_choice``, ``num_choices``, ``choice_label``, ...) are (examples,)
in both layouts; ``answer_position`` is the index within the example's row: for a packed batch, an
index into the one row. Code that maps per-example values onto the token grid goes through here, so
heads and token counts read either layout the same way.

>>> packed = {"input_ids": torch.tensor([[5, 6, 7, 8, 9]]), "seq_idx": torch.tensor([[0, 0, 0, 1, 1]]),
...           "cu_seq_lens_q": torch.tensor([0, 3, 5])}
>>> example_lengths(packed).tolist(), example_rows(packed).tolist()
([3, 2], [0, 0])
>>> cells_of_examples(packed, torch.tensor([False, True])).tolist()
[[False, False, False, True, True]]
"""

from typing import Any

import torch


def is_packed(batch: dict[str, Any]) -> bool:
    """One row of whole examples end to end (``seq_idx`` is only in packed batches)."""
    return "seq_idx" in batch


def example_lengths(batch: dict[str, Any]) -> torch.Tensor:
    """(examples,) real tokens of each example."""
    if is_packed(batch):
        return batch["cu_seq_lens_q"].long().diff()
    return batch["attention_mask"].sum(dim=1)


def real_tokens_in(batch: dict[str, Any]) -> int:
    """Tokens that are not padding."""
    return int(example_lengths(batch).sum())


def examples_in(batch: dict[str, Any]) -> int:
    """Examples (conversations) in the batch, whatever the layout."""
    return len(example_lengths(batch))


def example_rows(batch: dict[str, Any]) -> torch.Tensor:
    """(examples,) the row of ``input_ids`` each example is in."""
    examples = examples_in(batch)
    device = batch["input_ids"].device
    if is_packed(batch):
        return torch.zeros(examples, dtype=torch.long, device=device)
    return torch.arange(examples, device=device)


def example_of_cells(batch: dict[str, Any]) -> torch.Tensor:
    """(rows, seq) the example each cell of ``input_ids`` belongs to (padding: its row's example)."""
    if is_packed(batch):
        return batch["seq_idx"].long()
    rows, seq = batch["input_ids"].shape
    return torch.arange(rows, device=batch["input_ids"].device)[:, None].expand(rows, seq)


def cells_of_examples(batch: dict[str, Any], examples: torch.Tensor) -> torch.Tensor:
    """(rows, seq) True on the cells of the examples that are True in ``examples`` (examples,)."""
    return examples.to(batch["input_ids"].device)[example_of_cells(batch)]


def row_slices(batch: dict[str, Any], rows_per_slice: int):
    """A padded batch cut into batches of at most ``rows_per_slice`` examples: every per-example
    field (a tensor or list with one entry per row) sliced, the rest (flags) kept. An answering batch
    holds hundreds of prompts; its test loss is computed slice by slice, so its activations and
    logits are those of a validation batch."""
    if is_packed(batch):
        raise ValueError("row_slices: a packed batch has one row; slice padded batches only")
    count = len(batch["input_ids"])
    for start in range(0, count, rows_per_slice):
        yield {name: value[start : start + rows_per_slice] if _per_row(value, count) else value
               for name, value in batch.items()}


def _per_row(value: Any, count: int) -> bool:
    if isinstance(value, torch.Tensor):
        return value.dim() > 0 and value.shape[0] == count
    return isinstance(value, (list, tuple)) and len(value) == count
