"""Run directories: ``runs/<name>/version_N/`` with ``checkpoints/last.ckpt`` inside.

Lightning resolves ``ckpt_path="last"`` inside the *new* run's directory, where nothing exists
yet; here "last" means the newest ``last.ckpt`` of any earlier version of the same run name, and
a resumed ``fit`` keeps writing into that version's directory.
"""

from pathlib import Path


def newest_last_checkpoint(save_dir: str, name: str) -> Path:
    candidates = list(Path(save_dir, name).glob("version_*/checkpoints/last*.ckpt"))
    if not candidates:
        raise FileNotFoundError(
            f"--ckpt_path last: no checkpoint found under {Path(save_dir, name)}/version_*/checkpoints/; "
            "run `sft fit` first or pass a checkpoint file"
        )
    return max(candidates, key=lambda path: path.stat().st_mtime)


def version_of_checkpoint(checkpoint: Path) -> str | None:
    """``runs/demo/version_3/checkpoints/last.ckpt`` → ``version_3`` (None if not in a run dir)."""
    parent = checkpoint.resolve().parent
    return parent.parent.name if parent.name == "checkpoints" else None
