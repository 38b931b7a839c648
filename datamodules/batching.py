"""Training batches that a resumed run can redraw, and evaluation batches of one type each.

Each epoch's batches come from a generator seeded by (seed, epoch), not from the global random
state (which dropout and sampling move), so a run resumed from a mid-epoch checkpoint redraws the
interrupted epoch's exact order and skips the batches it already trained on.

Length-grouped batches put similar lengths together, so less compute goes to padding. The epoch's
shuffled order is cut into windows of ``window_batches`` batches, each window's examples are sorted
by length and cut into batches, and the window's batches are shuffled among themselves. With a
window of one optimizer step (``batch_size x accumulate x ranks`` examples, the data module's
default) every optimizer step trains on the examples that plain shuffled batches put in it, only
split into micro-batches by length: the loss is normalised over the step's trained tokens, so the
step's gradient, and the model, are those of plain shuffling (tests/test_quality_defaults.py), and
about a fifth of the padding goes away on the bundled data. Wider windows remove more padding but
make each step see one kind of example (the short choice questions together, the long code answers
together): 25 steps' windows cost 6% held-out loss on a 12-step run (benchmarks/RESULTS.md).
"""

import math
import warnings
from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Sampler


class EpochBatchSampler(Sampler[list[int]]):
    """Shuffled batches; epoch ``k``'s order depends only on ``seed + k``.

    Under data parallelism every rank draws the same epoch order and takes every
    ``num_replicas``-th batch from its ``rank`` on, so ranks never share a batch; the few batches
    past the last whole round are left out of that epoch, so every rank takes as many steps.
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0):
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self.skip_batches = 0

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """The next iteration is ``epoch``'s, without its first ``batches_done`` batches."""
        self.epoch, self.skip_batches = epoch, batches_done

    # The seed travels in the checkpoint (Lightning saves the state of stateful train loaders), so a
    # resumed run redraws the same orders even when started with another seed.
    def state_dict(self) -> dict:
        return {"seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.seed = state["seed"]

    def __len__(self) -> int:
        all_batches = (self.num_examples + self.batch_size - 1) // self.batch_size
        return all_batches // self.num_replicas

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches(torch.Generator().manual_seed(self.seed + self.epoch))
        this_rank = batches[self.rank :: self.num_replicas][: len(self)]
        skip, self.skip_batches = self.skip_batches, 0
        self.epoch += 1
        yield from this_rank[skip:]

    def epoch_batches(self, generator: torch.Generator) -> list[list[int]]:
        order = torch.randperm(self.num_examples, generator=generator).tolist()
        return [order[i : i + self.batch_size] for i in range(0, self.num_examples, self.batch_size)]


class LengthGroupedBatchSampler(EpochBatchSampler):
    """Plain shuffling's order, sorted by length within windows of ``window_batches`` batches.

    >>> list(EpochBatchSampler(8, batch_size=2, seed=0))
    [[4, 0], [7, 3], [2, 5], [1, 6]]
    >>> list(LengthGroupedBatchSampler([5, 1, 9, 3, 7, 2, 8, 4], batch_size=2, seed=0, window_batches=2))
    [[7, 3], [4, 0], [5, 1], [2, 6]]

    The second window (2 batches) holds examples 2, 5, 1, 6 either way; grouped, the long ones
    (lengths 9 and 8) share a batch and the short ones (2 and 1) the other.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, window_batches: int = 1,
                 num_replicas: int = 1, rank: int = 0):
        super().__init__(len(lengths), batch_size, seed, num_replicas, rank)
        self.lengths = list(lengths)
        self.window_batches = window_batches

    def epoch_batches(self, generator: torch.Generator) -> list[list[int]]:
        # the same permutation as EpochBatchSampler's for the same seed and epoch, so the windows hold
        # the examples that plain shuffling puts in the same optimizer steps
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        window_size = self.batch_size * self.window_batches
        batches = []
        for start in range(0, len(order), window_size):
            window = sorted(order[start : start + window_size], key=lambda i: self.lengths[i], reverse=True)
            window_batches = [window[i : i + self.batch_size] for i in range(0, len(window), self.batch_size)]
            batches += [window_batches[i] for i in torch.randperm(len(window_batches), generator=generator).tolist()]
        return batches


def resume_position(epoch: int, global_step: int, batches_per_epoch: int, accumulate: int) -> tuple[int, int]:
    """(epoch, batches already trained in it) of a run whose optimizer has taken ``global_step`` steps.

    Checkpoints are taken between optimizer steps, and every epoch but a partial last step is
    whole windows of ``accumulate`` batches, so the step count alone says where the epoch stopped.
    """
    steps_per_epoch = math.ceil(batches_per_epoch / accumulate)
    batches_done = (global_step - epoch * steps_per_epoch) * accumulate
    if batches_done >= batches_per_epoch:  # saved at the epoch's very end: the next epoch starts afresh
        return epoch + 1, 0
    return epoch, max(0, batches_done)


class TypeGroupedBatchSampler(Sampler[list[int]]):
    """Evaluation batches holding one group each (the types generated with the same settings, see
    ``SFTDataModule.answer_groups``; a type each without a module), longest prompt first within a group.

    Generation settings can differ per type, so a batch mixing settings needs one ``generate`` call
    per setting; on a CPU, one call over 8 rows costs about as much as one over 2 (reading the
    weights dominates), so grouping cuts generation time several-fold. With ``lengths`` (prompt tokens per
    row) a type's rows are sorted by them (longest first, ties in input order) before being cut into
    batches, so a batch's rows need little left padding and the longest batch comes first (memory
    runs out at once, if at all). Answers are put back in input order afterwards by their row index.

    Under data parallelism every rank builds the same batches and answers every ``num_replicas``-th
    one from its ``rank`` on. The last round is made whole by answering the first batches again (as
    torch's DistributedSampler repeats samples), so every rank takes as many steps: a rank with none
    would skip the loop and leave the others waiting for it at the end. A repeated batch has the same
    rows, so the same answers; the answer files keep each id once.

    Rows in ``leave_out`` (answered by an interrupted run) are dropped from their batches, so the
    rest batch as before.

    >>> TypeGroupedBatchSampler(["a", "b", "a", "a"], 2).batches
    [[0, 2], [3], [1]]
    >>> TypeGroupedBatchSampler(["a", "b", "a", "a"], 2, num_replicas=2, rank=1).batches
    [[3], [0, 2]]
    >>> TypeGroupedBatchSampler(["a", "b", "a", "a"], 2, leave_out={0, 1}).batches
    [[2], [3]]
    >>> TypeGroupedBatchSampler(["a", "b", "a", "a"], 2, lengths=[5, 9, 7, 5]).batches
    [[2, 0], [3], [1]]
    """

    def __init__(self, record_types: list[str], batch_size: int, num_replicas: int = 1, rank: int = 0,
                 leave_out: set[int] = frozenset(), lengths: list[int] | None = None):
        self.batch_size = batch_size
        rows_by_type: dict[str, list[int]] = {}
        for row, record_type in enumerate(record_types):
            rows_by_type.setdefault(record_type, []).append(row)
        if lengths is not None:  # sorted is stable: equal lengths stay in input order
            rows_by_type = {key: sorted(rows, key=lambda row: -lengths[row]) for key, rows in rows_by_type.items()}
        all_batches = [kept for rows in rows_by_type.values() for i in range(0, len(rows), batch_size)
                       if (kept := [row for row in rows[i : i + batch_size] if row not in leave_out])]
        self.batches = rank_share(all_batches, num_replicas, rank)  # what this rank answers
        self.repeated = repeated_in_share(len(all_batches), num_replicas, rank)  # its last ones, if any

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)


def rank_share(batches: list, num_replicas: int, rank: int) -> list:
    """Every ``num_replicas``-th batch from ``rank`` on, the last round made whole from the first batches.

    >>> rank_share(["b0", "b1", "b2"], 2, 0), rank_share(["b0", "b1", "b2"], 2, 1)
    (['b0', 'b2'], ['b1', 'b0'])
    """
    if not batches:
        return []
    rounds = math.ceil(len(batches) / num_replicas)
    whole_rounds = [batches[i % len(batches)] for i in range(rounds * num_replicas)]
    return whole_rounds[rank::num_replicas]


def repeated_in_share(num_batches: int, num_replicas: int, rank: int) -> int:
    """How many of ``rank_share``'s batches for ``rank`` are repeats (0 or 1, always its last).

    >>> [repeated_in_share(3, 2, rank) for rank in (0, 1)]
    [0, 1]
    """
    if not num_batches:
        return 0
    last_round = math.ceil(num_batches / num_replicas) - 1
    return int(last_round * num_replicas + rank >= num_batches)


class ValidationBatchSampler(Sampler[list[int]]):
    """Batches of the validation loss: consecutive examples in length order, so each batch pads to a
    length near its own examples' (the loss is a token-weighted sum: the order changes nothing else).
    In input order, the bundled data's batches of 8 each held a long code record: two thirds of the
    tokens were padding and a validation of 40 records took ~37 s on a 2-core AVX2 CPU.

    Under data parallelism each rank takes every ``num_replicas``-th batch, the last round made whole by
    repeating the first batches, as ``TypeGroupedBatchSampler`` does. Torch's DistributedSampler, which
    Lightning would put in instead, repeats single examples that no one can tell apart afterwards: the
    repeated batches here are known (``repeated``) and ``AnsweringBatches`` flags them, so the module
    counts them nowhere and the validation loss over all ranks is the one-process loss.

    >>> ValidationBatchSampler([5, 1, 4, 2, 3], 2).batches  # ties keep input order
    [[1, 3], [4, 2], [0]]
    >>> ValidationBatchSampler([1] * 5, 2, num_replicas=2, rank=1).batches, ValidationBatchSampler([1] * 5, 2, 2, 1).repeated
    ([[2, 3], [0, 1]], 1)
    """

    def __init__(self, lengths: list[int], batch_size: int, num_replicas: int = 1, rank: int = 0):
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        all_batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        self.batches = rank_share(all_batches, num_replicas, rank)
        self.repeated = repeated_in_share(len(all_batches), num_replicas, rank)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)


class AnsweringBatches(Iterable):
    """A DataLoader of ``TypeGroupedBatchSampler`` batches (or ``ValidationBatchSampler``'s, for the
    validation loss under data parallelism) that Lightning iterates as it is.

    Lightning rebuilds a test or predict DataLoader to put a DistributedSampler (under data
    parallelism) or an index-tracking wrapper (predict) into its batch sampler, which a batch
    sampler that is not a torch ``BatchSampler`` cannot take: ``sft test`` on two ranks stopped with a
    TypeError. An iterable that is not a DataLoader is left alone; the sampler takes its rank's share.
    """

    def __init__(self, dataloader: DataLoader):
        self.dataloader = dataloader
        self.batch_sampler, self.dataset = dataloader.batch_sampler, dataloader.dataset  # the progress bar counts them

    def __len__(self) -> int:
        return len(self.dataloader)

    def __iter__(self) -> Iterator[dict]:
        """The batches; those that only make a rank's last round whole carry ``repeated_batch: True``
        (their answers duplicate an earlier batch's; the module leaves their losses out)."""
        first_repeat = len(self.dataloader) - getattr(self.batch_sampler, "repeated", 0)
        for position, batch in enumerate(self.dataloader):
            if position >= first_repeat:
                batch["repeated_batch"] = True
            yield batch


# The answer writers read each answer's row index, not Lightning's batch indices, which only a
# rebuilt DataLoader has: the warning that they are missing says nothing to act on.
warnings.filterwarnings("ignore", message="Couldn't infer the batch indices fetched from your dataloader: `AnsweringBatches`")

def prompt_lengths(examples) -> list[int]:
    """Prompt tokens of each answering example: its ``prompt_ids`` (predict), else up to its answer position."""
    if "prompt_ids" in examples.column_names:
        return [len(ids) for ids in examples["prompt_ids"]]
    return [position + 1 for position in examples["answer_position"]]

