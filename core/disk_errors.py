"""A result that cannot be written (full disk, no permission, read-only): its half-written output is
removed and one line says what was being written, where, about how much room it needs, what is
still intact and how to run it again.

The merged export, ``sft export-gguf`` and checkpoint saves all write ``NAME.partial`` beside the
final name and rename it at the end, and a full disk interrupts them all the same way; one helper
says it the same way, and ``lightning_app/main.py`` prints it as ``error: <line>`` without a traceback.
"""

import errno
import shutil
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

import torch

NO_ROOM = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
NO_RIGHTS = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
             errno.EROFS: "read-only file system"}


class OutputWriteError(RuntimeError):
    """A result could not be written for want of room or rights; its partial output was removed."""


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes the tensors take as they are stored now: the size of a file that holds them."""
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def readable_size(size: int) -> str:
    """Decimal units, as ``df -H`` shows free space.

    >>> readable_size(520_123_456), readable_size(143_056), readable_size(900)
    ('520 MB', '143 kB', '1 kB')
    """
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{max(1, round(size / 1e3))} kB"


def last_complete_checkpoint(folder: str | Path | None) -> tuple[Path, int] | None:
    """The newest ``*.ckpt`` in ``folder`` that reads as a checkpoint, and its global step (the
    ``*.partial`` ones being written are not ``*.ckpt``); None if there is none."""
    from core.checkpoint_file import newest_readable  # torch.load: only when asked

    if folder is None or not Path(folder).is_dir():
        return None
    path, checkpoint, _ = newest_readable(Path(folder).glob("*.ckpt"))
    return None if path is None else (path, int(checkpoint.get("global_step", 0)))


def checkpoints_intact(folder: str | Path | None) -> tuple[str, Path | None]:
    """What to say of the run's checkpoints after a failed write, and the one to go on from."""
    found = last_complete_checkpoint(folder)
    if found is None:
        return "no checkpoint of this run was saved", None
    return f"the checkpoints are intact ({found[0]}, step {found[1]})", found[0]


def remove_partial(partial: Path) -> None:
    if partial.is_dir():
        shutil.rmtree(partial, ignore_errors=True)
    elif partial.exists():
        partial.unlink()


@contextmanager
def removed_on_write_fault(partial: Path, what: str, where: Path, needed_bytes: int,
                           intact_and_rerun: Callable[[], tuple[str, str]]):
    """Runs the block that writes ``partial`` (renamed to ``where`` when whole). On a full disk or an
    unwritable path ``partial`` is removed and ``OutputWriteError`` raised, with
    ``intact_and_rerun()`` (asked only then: it may read checkpoints) giving what is still safe and
    the command that writes ``what`` again. Other errors pass through unchanged."""
    try:
        yield
    except OSError as error:
        if error.errno not in NO_ROOM | NO_RIGHTS:
            raise
        remove_partial(Path(partial))
        intact, rerun = intact_and_rerun()
        remedy = "free space" if error.errno in NO_ROOM else f"make {Path(where).parent} writable"
        raise OutputWriteError(
            f"{(NO_ROOM | NO_RIGHTS)[error.errno]} writing {what} to {where} (needs ~{readable_size(needed_bytes)}); "
            f"{intact}: {remedy} and {rerun}"
        ) from error
