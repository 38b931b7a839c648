"""``sft demo``: fine-tune, evaluate base and tuned, answer the test set, and compare, in one go.

This is what ``make demo`` runs. Every step is an ordinary ``sft`` subcommand on the same config;
run directories are read back from each step, so nothing depends on version numbers.
"""

import argparse
from pathlib import Path

from lightning_app.cli import SFTCLI
from modules.evaluation.report import build_report


def _run(args: list[str]) -> SFTCLI:
    print(f"\n=== sft {' '.join(args)}", flush=True)
    return SFTCLI(args=args)


def run_demo(config: str, references: str, extra: list[str]) -> dict[str, Path]:
    """Returns where the checkpoint, the runs, the answers and the report are."""
    fitted = _run(["fit", "--config", config, *extra])
    checkpoint = fitted.trainer.checkpoint_callback.last_model_path
    tuned = _run(["test", "--config", config, "--ckpt_path", checkpoint, "--data.test_path", references, *extra])
    base = _run(["test", "--config", config, "--data.test_path", references, *extra])
    predicted = _run(["predict", "--config", config, "--ckpt_path", checkpoint, *extra])
    fit_dir = Path(fitted.trainer.log_dir)
    report = build_report(base.trainer.log_dir, tuned.trainer.log_dir, references,
                          str(fit_dir / "report"))
    return {
        "checkpoint": Path(checkpoint),
        "merged model": fit_dir / "merged",
        "TensorBoard logs": fit_dir,
        "answers": Path(predicted.trainer.log_dir) / "predictions.json",
        "base test run": Path(base.trainer.log_dir),
        "tuned test run": Path(tuned.trainer.log_dir),
        "report": report,
    }


def demo_command(argv: list[str]) -> None:
    """sft demo [--config configs/demo.yaml] [--references data/bundled/test.jsonl] [overrides ...]."""
    parser = argparse.ArgumentParser(prog="sft demo", description=demo_command.__doc__)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--references", default="data/bundled/test.jsonl", help="labelled test file")
    args, extra = parser.parse_known_args(argv)
    places = run_demo(args.config, args.references, extra)
    print("\n" + places["report"].read_text(encoding="utf-8"))
    for what, where in places.items():
        print(f"{what}: {where}")
    print(f"view the logs: tensorboard --logdir {places['TensorBoard logs'].parent}")
