"""Run directories: ``runs/<name>/version_N/`` with ``checkpoints/last.ckpt`` inside.

Lightning resolves ``ckpt_path="last"`` inside the *new* run's directory, where nothing exists
yet; here "last" means the newest ``last.ckpt`` of any earlier version of the same run name, and
a resumed ``fit`` keeps writing into that version's directory.
"""

from pathlib import Path

from core.checkpoint_file import CheckpointError, read_checkpoint


def newest_last_checkpoint(save_dir: str, name: str) -> Path:
    """The newest readable ``last*.ckpt`` of the run name; an unreadable newer one (a disk that filled,
    a copy cut short) is passed over with one line saying so."""
    candidates = sorted(Path(save_dir, name).glob("version_*/checkpoints/last*.ckpt"),
                        key=lambda path: path.stat().st_mtime, reverse=True)
    if not candidates:
        raise FileNotFoundError(
            f"--ckpt_path last: no checkpoint found under {Path(save_dir, name)}/version_*/checkpoints/; "
            "run `sft fit` first or pass a checkpoint file"
        )
    problems = []
    for candidate in candidates:
        try:
            read_checkpoint(candidate)
        except CheckpointError as error:
            problems.append(str(error).split("; ")[0])
            continue
        for problem in problems:
            print(f"--ckpt_path last: passed over {problem}; using {candidate}")
        return candidate
    raise CheckpointError(f"--ckpt_path last: none of the checkpoints under {Path(save_dir, name)} can be read: "
                          + " | ".join(problems))


def version_of_checkpoint(checkpoint: Path) -> str | None:
    """``runs/demo/version_3/checkpoints/last.ckpt`` → ``version_3`` (None if not in a run dir)."""
    parent = checkpoint.resolve().parent
    return parent.parent.name if parent.name == "checkpoints" else None
