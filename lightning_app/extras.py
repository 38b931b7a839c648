"""Small commands beside LightningCLI's own: ``sft inspect`` and ``sft fetch-model``."""

import argparse
import sys

from datamodules.inspect import inspect_split, split_errors


def inspect_command(argv: list[str]) -> None:
    """sft inspect --config X.yaml [--show N] [--dump FILE.jsonl] [--split train|val|test]."""
    parser = argparse.ArgumentParser(prog="sft inspect", description="Show and dump tokens and labels.")
    parser.add_argument("--show", type=int, default=3, help="examples to print with trained tokens marked")
    parser.add_argument("--dump", help="write every example's input_ids, labels and text to this jsonl")
    parser.add_argument("--split", default="train", choices=["train", "val", "test"])
    parser.add_argument("--max-errors", type=int, default=20,
                        help="bad records to list (one line each) before stopping; any bad record exits with 2")
    own_args, cli_args = parser.parse_known_args(argv)
    from lightning_app.cli import SFTCLI  # imported late: fetch-model must not pay for Lightning's import

    cli = SFTCLI(args=cli_args, run=False)
    errors = split_errors(cli.datamodule, own_args.split, own_args.max_errors)
    if errors:
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
        more = " (the first ones; raise --max-errors to list more)" if len(errors) >= own_args.max_errors else ""
        print(f"sft inspect: {len(errors)} bad record(s){more}; fix them and run again", file=sys.stderr)
        raise SystemExit(2)  # as console_main exits on bad input
    inspect_split(cli.datamodule, own_args.split, own_args.show, own_args.dump)


def fetch_model_command(argv: list[str]) -> None:
    """sft fetch-model ALIAS: download and convert an embedded model once, print its folder."""
    from core.embedded import ensure_embedded_model

    parser = argparse.ArgumentParser(prog="sft fetch-model", description=fetch_model_command.__doc__)
    parser.add_argument("alias", nargs="?", default="smollm2-135m-instruct")
    print(ensure_embedded_model(parser.parse_args(argv).alias))


def score_command(argv: list[str]) -> None:
    """sft score --predictions ANSWERS --references LABELLED [--data.format F] [--out metrics.json]: no model needed."""
    from evaluation.scoring import format_metrics_table, score_files
    from lightning_app.labelled_records import add_data_arguments, reference_records

    parser = argparse.ArgumentParser(prog="sft score", description=score_command.__doc__)
    parser.add_argument("--predictions", required=True, help="predictions.json (seed format) or .jsonl")
    add_data_arguments(parser)
    parser.add_argument("--out", help="where to write metrics.json (default: beside the predictions)")
    args = parser.parse_args(argv)
    metrics, metrics_path = score_files(args.predictions, reference_records(args), args.out)
    print(format_metrics_table(metrics))
    print(f"metrics written: {metrics_path}")


def report_command(argv: list[str]) -> None:
    """sft report --base RUN_OR_ANSWERS --tuned RUN_OR_ANSWERS --references LABELLED --out DIR."""
    from evaluation.report import build_report
    from lightning_app.labelled_records import add_data_arguments, reference_records

    parser = argparse.ArgumentParser(prog="sft report", description=report_command.__doc__)
    parser.add_argument("--base", required=True, help="an `sft test` run directory or an answers file")
    parser.add_argument("--tuned", required=True, help="an `sft test` run directory or an answers file")
    add_data_arguments(parser)
    parser.add_argument("--out", default="reports/latest",
                        help="folder for report.md, report.html, scores_by_type.png, loss_curves.png")
    parser.add_argument("--names", nargs=2, default=["base", "tuned"], metavar=("BASE", "TUNED"))
    args = parser.parse_args(argv)
    report_path = build_report(args.base, args.tuned, reference_records(args), args.out, tuple(args.names))
    print(report_path.read_text(encoding="utf-8"))
    print(f"report written: {report_path} (and report.html beside it)")


def compare_command(argv: list[str]) -> None:
    """sft compare RUN_DIR [RUN_DIR ...] --out DIR: one table across runs and overlaid loss curves."""
    from lightning_app.compare import compare_command as compare

    compare(argv)


def export_gguf_command(argv: list[str]) -> None:
    """sft export-gguf RUN/merged --out model.gguf --type f16|q8_0|q4_k_m|q5_k_m|q6_k: one GGUF for llama.cpp and Ollama."""
    from lightning_app.export import export_gguf_command as export_gguf

    export_gguf(argv)


def eval_command(argv: list[str]) -> None:
    """sft eval RUN|FOLDER|MODEL [--tasks T,...]: lm-evaluation-harness, results in <run>/eval."""
    from lightning_app.eval import eval_command as evaluate

    evaluate(argv)


def demo_command(argv: list[str]) -> None:
    """sft demo: fit, test tuned and base, predict, report (what `make demo` runs)."""
    from lightning_app.demo import demo_command as demo

    demo(argv)


def chat_command(argv: list[str]) -> None:
    """sft chat --config X.yaml [--ckpt_path FILE|last]: a terminal chat, replies streamed."""
    from lightning_app.chat import chat_command as chat

    chat(argv)


EXTRA_COMMANDS = {"inspect": inspect_command, "fetch-model": fetch_model_command, "score": score_command,
                  "report": report_command, "compare": compare_command, "demo": demo_command,
                  "export-gguf": export_gguf_command, "eval": eval_command, "chat": chat_command}

# One line each for ``sft --help``; LightningCLI's own subcommands first.
COMMAND_SUMMARIES = {
    "fit": "train from a YAML config (resume with --ckpt_path last)",
    "validate": "validation loss of a model or checkpoint",
    "test": "answer a labelled file, score it by its format's metric, write metrics.json",
    "predict": "answer a file, write predictions.json and predictions.jsonl",
    "inspect": "show which tokens are trained, dump input_ids and labels",
    "fetch-model": "download and convert an embedded model (smollm2-135m-instruct) once",
    "score": "score an answers file made elsewhere against a labelled file (no model)",
    "report": "base vs tuned: metrics, examples and loss curves as Markdown and HTML",
    "compare": "one table and overlaid loss curves across runs",
    "demo": "fit, test tuned and base, predict, report: what `make demo` runs",
    "export-gguf": "write a merged folder as one GGUF (f16, q8_0; K-quants with the llama extra), checked by logits and llama.cpp",
    "eval": "standard benchmarks (lm-evaluation-harness, the eval extra) on a run, folder or model",
    "chat": "talk with a checkpoint or model in the terminal, replies streamed",
}


def print_overview() -> None:
    """``sft --help``: every subcommand with one line; LightningCLI's own help is ``sft fit --help``."""
    width = max(map(len, COMMAND_SUMMARIES))
    print("usage: sft COMMAND [options]    (sft COMMAND --help shows a command's options)\n\ncommands:")
    for command, summary in COMMAND_SUMMARIES.items():
        print(f"  {command.ljust(width)}  {summary}")
    print("\nfit, validate, test and predict take --config FILE.yaml; any option can be overridden on the command "
          "line,\nand --print_config shows the full configuration.")
