"""``datasets.map`` over several processes, with progress that a log file can hold.

Tokenizing takes about 1 ms a record in one Python process: at a million records, ten minutes with
every other core idle. ``datasets`` cuts the rows into contiguous shards, one per process, and joins
the results in row order, so any ``num_proc`` gives the tokens of one process, in the same order
(tests/test_num_proc.py). Starting the processes (and sending each the tokenizer) costs about a
second, more than a small split's whole tokenizing: under ``SMALL_SPLIT`` records the default is one.

On a terminal the progress bar is ``datasets``' own. Without one (a log file, a batch job), a bar
redrawn ten times a second fills the log with carriage returns: there, one process takes the rows in
``LOG_LINES`` contiguous pieces with one line after each, and several processes say one line when
they start and one when they are done (pieces would start the processes again for each piece: 20k
records took 91 s in pieces against 51-57 s in one go, benchmarks/RESULTS.md).
"""

import os
import sys
import time
from collections.abc import Callable

import datasets
from lightning.pytorch.utilities import rank_zero_info

from datamodules.record_loading import quiet_datasets

SMALL_SPLIT = 10_000
LOG_LINES = 10


def usable_cores() -> int:
    """The cores this process may run on (a job's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_num_proc(num_proc: int | None, rows: int) -> int:
    """``num_proc`` if given, else every usable core from ``SMALL_SPLIT`` rows up, one below.

    >>> resolve_num_proc(None, 500), resolve_num_proc(3, 500), resolve_num_proc(4, 2)
    (1, 3, 2)
    """
    chosen = num_proc if num_proc is not None else (usable_cores() if rows >= SMALL_SPLIT else 1)
    return max(1, min(chosen, rows))


def map_rows(dataset: datasets.Dataset, function: Callable, fn_kwargs: dict, num_proc: int,
             desc: str) -> datasets.Dataset:
    """``dataset.map(function)`` (one row at a time, its ``conversation`` column replaced by what
    ``function`` returns) on ``num_proc`` processes, kept in memory."""
    settings = dict(fn_kwargs=fn_kwargs, remove_columns=["conversation"], keep_in_memory=True,
                    num_proc=num_proc if num_proc > 1 else None)
    if sys.stderr.isatty() or len(dataset) < SMALL_SPLIT:
        return dataset.map(function, desc=desc, **settings)
    started = time.perf_counter()
    if num_proc > 1:
        rank_zero_info(f"{desc}: {len(dataset):,} records on {num_proc} processes")
        with quiet_datasets():
            mapped = dataset.map(function, **settings)
        rank_zero_info(f"{desc}: {len(dataset):,} of {len(dataset):,} records, {time.perf_counter() - started:.0f} s")
        return mapped
    pieces, piece_rows = [], -(-len(dataset) // LOG_LINES)
    with quiet_datasets():
        for start in range(0, len(dataset), piece_rows):
            rows = range(start, min(start + piece_rows, len(dataset)))
            pieces.append(dataset.select(rows).map(function, **settings))
            rank_zero_info(f"{desc}: {rows.stop:,} of {len(dataset):,} records, "
                           f"{time.perf_counter() - started:.0f} s")
    return datasets.concatenate_datasets(pieces)
