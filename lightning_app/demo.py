"""``sft demo``: fine-tune, evaluate base and tuned, answer the test set, and compare, in one go.

This is what ``make demo`` runs. Every step is an ordinary ``sft`` subcommand on the same config, in
a run folder named for it (``fit``, ``test-tuned``, ``test-base``, ``predict``: what TensorBoard lists);
run directories are read back from each step, so a second demo in the same folder (``fit_1``, ...)
reads its own.
"""

import argparse
import gc
from dataclasses import dataclass
from pathlib import Path

from lightning_app.cli import SFTCLI
from evaluation.report import build_report


@dataclass
class StepResult:
    run_dir: Path
    checkpoint: str
    test_records: list | None  # the test split's records, as the data module read them (test steps)


def _run(args: list[str], run_label: str | None = None) -> StepResult:
    """Run one subcommand in a run folder named ``run_label`` (default: the subcommand); return its run
    directory, last checkpoint and test records, and free its model."""
    print(f"\n=== sft {' '.join(args)}", flush=True)
    cli = SFTCLI(args=args, run_label=run_label)
    datamodule = cli.datamodule
    result = StepResult(Path(cli.trainer.log_dir), cli.trainer.checkpoint_callback.last_model_path,
                        datamodule.records("test") if args[0] == "test" else None)
    del cli, datamodule
    gc.collect()  # each step loads the model anew: do not keep the previous one (and its optimizer) alive
    return result


def check_answering_files(config: str, references: str, extra: list[str]) -> bool:
    """The files of the test and predict steps, read and checked before the fit starts: a mistake in
    them stops the demo at once (one located error), not after minutes of training. Returns whether
    the predict file asks the test file's questions (same ids and prompts, in the same order)."""
    cli = SFTCLI(args=["--config", config, "--data.test_path", references, *extra], run=False)
    cli.datamodule.check_files(("test", "predict"))
    questions = {split: [(record.id, record.prompt_messages) for record in cli.datamodule.records(split)]
                 for split in ("test", "predict") if cli.datamodule.paths[split]}
    return questions.get("test") == questions.get("predict")


def run_demo(config: str, references: str, extra: list[str]) -> dict[str, Path]:
    """Returns where the checkpoint, the runs, the answers and the report are.

    Where the predict file asks the test file's questions (the bundled test set without its answers),
    the tuned model's test step has already answered them with the same settings: its answers file is
    the one ``sft predict`` would write, so the demo does not generate them twice (a fifth of its time
    on a CPU); ``tests/test_cli.py`` checks that the two files agree."""
    predict_is_test = check_answering_files(config, references, extra)
    fit = _run(["fit", "--config", config, *extra])
    checkpoint, fit_dir = fit.checkpoint, fit.run_dir
    tuned = _run(["test", "--config", config, "--ckpt_path", checkpoint, "--data.test_path", references, *extra],
                 "test-tuned")
    base = _run(["test", "--config", config, "--data.test_path", references, *extra], "test-base")
    if predict_is_test:
        answers = tuned.run_dir / "test_answers" / "predictions.json"
    else:
        answers = _run(["predict", "--config", config, "--ckpt_path", checkpoint, *extra]).run_dir / "predictions.json"
    tuned_dir, base_dir = tuned.run_dir, base.run_dir
    report = build_report(str(base_dir), str(tuned_dir), tuned.test_records, str(fit_dir / "report"))
    return {
        "checkpoint": Path(checkpoint),
        "merged model": fit_dir / "merged",
        "adapter (PeftModel.from_pretrained)": fit_dir / "adapter",
        "TensorBoard logs": fit_dir,
        "answers": answers,
        "base test run": base_dir,
        "tuned test run": tuned_dir,
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
