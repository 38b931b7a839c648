"""``sft eval RUN|FOLDER|MODEL [--tasks T,...]``: lm-evaluation-harness on a run, a folder or a model (``evaluation/harness.py``)."""

import argparse

import torch

from evaluation.harness import DEFAULT_TASKS, evaluate_model, prepare_tasks, write_results
from evaluation.harness_source import find_source, load_source, results_folder


def limit_value(text: str) -> float:
    """``--limit 5`` (documents per task) or ``--limit 0.5`` (a fraction of each task)."""
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return int(value) if value >= 1 else value


def eval_command(argv: list[str]) -> None:
    """sft eval RUN|FOLDER|MODEL [--tasks T,...] [--limit N] [--batch-size B] [--num-fewshot K] [--out DIR]."""
    parser = argparse.ArgumentParser(prog="sft eval", description=eval_command.__doc__)
    parser.add_argument("source", help="a run folder (runs/NAME/fit: its adapter on the base, else merged/), "
                                       "a merged or adapter folder, or a model name (smollm2-135m-instruct)")
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS),
                        help="comma-separated lm-eval task or group names, or task YAML files (default: the shipped "
                             "sft_bundled, offline); hub tasks such as hellaswag need the Hugging Face hub")
    parser.add_argument("--include-path", action="append", default=[], help="a folder of lm-eval task YAML files")
    parser.add_argument("--limit", type=limit_value, default=None, help="documents per task (a fraction below 1)")
    parser.add_argument("--batch-size", default="8", help="lm-eval's batch size, or 'auto'")
    parser.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: each task's own)")
    parser.add_argument("--no-chat-template", action="store_true", help="plain prompts instead of the chat template")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--out", help="results folder (default: <run>/eval for a run or a folder inside one)")
    args = parser.parse_args(argv)
    batch_size = args.batch_size if args.batch_size == "auto" else positive_int(args.batch_size, "--batch-size")
    tasks = [name.strip() for name in args.tasks.split(",") if name.strip()]
    source = find_source(args.source)
    out_dir = results_folder(source, args.out)  # these two before the model: a mistake costs no model time
    prepared = prepare_tasks(tasks, args.include_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = load_source(source, args.dtype, device)
    results = evaluate_model(model, tokenizer, prepared, args.limit, batch_size, args.num_fewshot,
                             chat_template=not args.no_chat_template)
    json_path, markdown_path = write_results(results, args.source, out_dir)
    print(markdown_path.read_text(encoding="utf-8"))
    print(f"results written: {json_path} and {markdown_path.name} beside it")


def positive_int(text: str, option: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise ValueError(f"{option} must be a positive whole number or 'auto', got '{text}'")
    return int(text)
