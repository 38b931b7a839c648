"""Run directories: ``runs/<name>/version_N/`` with ``checkpoints/last.ckpt`` inside.

Lightning resolves ``ckpt_path="last"`` inside the *new* run's directory, where nothing exists
yet; here "last" means the newest ``last.ckpt`` of any earlier version of the same run name, and
a resumed ``fit`` keeps writing into that version's directory.
"""

from pathlib import Path

from core.checkpoint_file import CheckpointError, newest_readable


def newest_last_checkpoint(save_dir: str, name: str) -> Path:
    """The newest readable ``last*.ckpt`` of the run name; an unreadable newer one (a disk that filled,
    a copy cut short) is passed over with one line saying so."""
    candidates = list(Path(save_dir, name).glob("version_*/checkpoints/last*.ckpt"))
    if not candidates:
        raise FileNotFoundError(
            f"--ckpt_path last: no checkpoint found under {Path(save_dir, name)}/version_*/checkpoints/; "
            "run `sft fit` first or pass a checkpoint file"
        )
    checkpoint, _, passed_over = newest_readable(candidates)
    if checkpoint is None:
        raise CheckpointError(f"--ckpt_path last: none of the checkpoints under {Path(save_dir, name)} can be read: "
                              + " | ".join(passed_over))
    for problem in passed_over:
        print(f"--ckpt_path last: passed over {problem}; using {checkpoint}")
    return checkpoint


def version_of_checkpoint(checkpoint: Path) -> str | None:
    """``runs/demo/version_3/checkpoints/last.ckpt`` → ``version_3`` (None if not in a run dir)."""
    parent = checkpoint.resolve().parent
    return parent.parent.name if parent.name == "checkpoints" else None
