"""A checkpoint file the user names, read or refused in one line that says why and what to do.

Checkpoints are read with ``torch.load(weights_only=True)``: tensors, numbers, strings and plain
containers only. A file holding any other pickled object is refused, because loading it would run
that object's code; the message says so and never suggests ``weights_only=False``. Reading maps
the file (``mmap``) rather than copying it, so checking a multi-GB checkpoint costs little.
"""

import pickle
import re
from pathlib import Path

import torch

USE_ANOTHER = "use a checkpoint written by `sft fit` (an earlier one in the same checkpoints/ folder, or --ckpt_path last)"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and what to do."""


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint's contents, tensors memory-mapped; CheckpointError if it cannot be used."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file; {USE_ANOTHER}")
    if path.is_dir():
        raise CheckpointError(f"{path}: a folder, not a checkpoint file; a merged model folder is given with "
                              "--model.model_name_or_path, a checkpoint with --ckpt_path FILE.ckpt")
    try:
        checkpoint = _load(path)
    except pickle.UnpicklingError as error:
        raise CheckpointError(_unpickling_problem(path, str(error))) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({path.stat().st_size:,} bytes: truncated, "
                              f"or not a PyTorch file: {_first_line(error)}); {USE_ANOTHER}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: a PyTorch file but not a Lightning checkpoint (no state_dict); {USE_ANOTHER}")
    return checkpoint


def newest_readable(paths) -> tuple[Path | None, dict | None, list[str]]:
    """The newest of ``paths`` (by modification time) that reads as a checkpoint, its contents, and
    why each newer one was passed over (a disk that filled, a copy cut short); (None, None, reasons)
    if none reads."""
    passed_over = []
    for path in sorted(paths, key=lambda file: Path(file).stat().st_mtime, reverse=True):
        try:
            return Path(path), read_checkpoint(path), passed_over
        except CheckpointError as error:
            passed_over.append(str(error).split("; ")[0])
    return None, None, passed_over


def _load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # not a zip file: no mmap, same refusals


def _unpickling_problem(path: Path, message: str) -> str:
    """The weights-only unpickler names the object it refused (``GLOBAL module.Name``).

    >>> print(_unpickling_problem(Path("x.ckpt"), "Weights only load failed ... Unsupported global: GLOBAL evil.Thing was"))
    x.ckpt: refused: it holds a pickled evil.Thing, not only tensors and plain values, and loading it would run that object's code; use a checkpoint written by `sft fit` (an earlier one in the same checkpoints/ folder, or --ckpt_path last)
    """
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        return (f"{path}: refused: it holds a pickled {found.group(1)}, not only tensors and plain values, and "
                f"loading it would run that object's code; {USE_ANOTHER}")
    return f"{path}: not a PyTorch checkpoint ({_first_line(message)}); {USE_ANOTHER}"


def _first_line(error) -> str:
    return str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
