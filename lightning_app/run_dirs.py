"""Run directories: ``runs/<name>/<run>/`` with ``checkpoints/last.ckpt`` inside, where ``<run>`` says
what ran: ``fit``, ``test``, ``predict``, ``validate`` (``sft demo``: ``test-tuned``, ``test-base``),
then ``fit_1``, ``fit_2``, ... for the next runs of the same subcommand under the same name.

Named runs are what TensorBoard lists (``tensorboard --logdir runs``): ``demo/fit`` beside
``demo/test-base`` tells a reader what each is, where Lightning's ``version_3`` would not. A logger
``version`` set in the config or on the command line is kept as it is.

Lightning resolves ``ckpt_path="last"`` inside the *new* run's directory, where nothing exists
yet; here "last" means the newest ``last.ckpt`` of any earlier run of the same run name (named runs
and Lightning's ``version_N`` alike), and a resumed ``fit`` keeps writing into that run's directory.
"""

from pathlib import Path

from core.checkpoint_file import CheckpointError, newest_readable


def next_run_version(save_dir: str, name: str, label: str) -> str:
    """``label`` where ``<save_dir>/<name>/<label>`` is not taken yet, else ``label_1``, ``label_2``, ...

    >>> next_run_version("/nonexistent", "demo", "fit")
    'fit'
    """
    folder = Path(save_dir, name)
    version, count = label, 0
    while (folder / version).exists():
        count += 1
        version = f"{label}_{count}"
    return version


def newest_last_checkpoint(save_dir: str, name: str) -> Path:
    """The newest readable ``last*.ckpt`` of the run name; an unreadable newer one (a disk that filled,
    a copy cut short) is passed over with one line saying so."""
    candidates = list(Path(save_dir, name).glob("*/checkpoints/last*.ckpt"))
    if not candidates:
        raise FileNotFoundError(
            f"--ckpt_path last: no checkpoint found under {Path(save_dir, name)}/*/checkpoints/; "
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
    """``runs/demo/fit/checkpoints/last.ckpt`` → ``fit`` (None if not in a run dir)."""
    parent = checkpoint.resolve().parent
    return parent.parent.name if parent.name == "checkpoints" else None
