"""This trainer and TRL's ``SFTTrainer`` side by side: same records, model, method, batches, lengths.

Each side trains in its own process (its own peak-memory counter), one after the other, then one
table is printed (and written with ``--out``): real tokens per second, peak memory, the trained
model's loss over the records' trained tokens (computed after training, the same way for both
sides: step losses are not comparable, the two trainers order batches differently), and
ours/TRL. A ratio holds across machines; an absolute CPU figure does not. With ``--repeats N``
the sides run N times, alternating, and the table shows each side's median run.

    .venv/bin/python -m benchmarks.vs_trl --method lora --records 64 --out benchmarks/vs_trl/cpu_lora.md
    .venv/bin/python -m benchmarks.vs_trl --method full --records 64 --repeats 3   # median of 3 runs per side

Both sides get the same settings: the first ``--records`` bundled training records (typed), the
chat template rendered by each trainer itself, answers-only loss (TRL's prompt-completion path),
micro-batches of ``--batch`` with ``--accumulate`` of them per optimizer step, ``--max-length``,
AdamW at ``--lr`` with a constant schedule, no weight decay and gradients clipped at norm 1
(TRL's defaults), one epoch, the precision this project chooses for the machine
(``modules/training/precision.py``; TRL gets ``bf16=True`` where that is bf16-mixed). Real tokens
are the non-padding tokens of the trained examples (the same count on both sides); TRL's time is
its ``train_runtime``, ours the epoch's training time from ``summary.json``.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_TRAIN = PROJECT_ROOT / "data" / "bundled" / "train.jsonl"


def first_records(count: int, folder: Path) -> Path:
    lines = BUNDLED_TRAIN.read_text(encoding="utf-8").splitlines()[:count]
    path = folder / "train.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def print_and_write(text: str, out: str | Path | None) -> None:
    """The table on stdout, and into ``out`` (a Markdown file) if given."""
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text, encoding="utf-8")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def loss_on_records(model, tokenizer, train_path: str, bf16: bool, max_length: int) -> float:
    """The trained model's token-weighted loss over every trained token of the records (cut at
    ``max_length`` as in training), one record at a time, computed the same way for both sides:
    what the training reached, comparable where step losses are not (the two trainers order
    batches differently)."""
    import torch

    from datamodules.chat_tokens import tokenize_conversation
    from datamodules.normalize import ConversationSpec, read_records
    from modules.speed.compiling import eager_generation

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), eager_generation():
        for record in read_records(train_path, ConversationSpec("typed")):
            tokens = tokenize_conversation(tokenizer, record.messages)
            input_ids = torch.tensor([tokens["input_ids"][:max_length]])
            labels = torch.tensor([tokens["labels"][:max_length]])
            trained = int((labels[:, 1:] != -100).sum())
            if trained:
                total += float(model(input_ids=input_ids, labels=labels).loss) * trained
                count += trained
    return total / count


# One side per process -------------------------------------------------------------------------------
def run_trl(args) -> dict:
    """TRL's SFTTrainer on the records as prompt-completion conversations (answers-only loss)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from core.embedded import resolve_model_path
    from core.tokenizer import load_tokenizer
    from datamodules.normalize import ConversationSpec, read_records
    from modules.training.precision import choose_precision, probe, probe_kind

    torch.manual_seed(args.seed)
    records = read_records(args.train_path, ConversationSpec("typed"))
    rows = [{"prompt": r.prompt_messages, "completion": [r.messages[-1]]} for r in records]
    tokenizer = load_tokenizer(args.model)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(args.model), dtype=torch.float32)
    bf16 = choose_precision(probe_kind("auto"), probe(probe_kind("auto"))).precision == "bf16-mixed"
    config = SFTConfig(
        output_dir=args.work_dir, per_device_train_batch_size=args.batch, gradient_accumulation_steps=args.accumulate,
        max_length=args.max_length, num_train_epochs=1, learning_rate=args.lr, lr_scheduler_type="constant",
        bf16=bf16, use_cpu=not torch.cuda.is_available(), report_to="none", save_strategy="no", logging_steps=1,
        seed=args.seed, disable_tqdm=True, packing=False)
    peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM") \
        if args.method == "lora" else None
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=peft_config)
    real_tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    result = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    trained_loss = loss_on_records(trainer.model, tokenizer, args.train_path, bf16, args.max_length)
    return {"side": "TRL SFTTrainer", "seconds": result.metrics["train_runtime"], "real_tokens": real_tokens,
            "peak_mib": peak_rss_mib(), "final_loss": losses[-1] if losses else None,
            "mean_loss": result.metrics["train_loss"], "trained_loss": trained_loss,
            "precision": "bf16-mixed" if bf16 else "32-true"}


def run_ours(args) -> dict:
    """``sft fit`` with the same settings, in this process."""
    from lightning_app.cli import SFTCLI

    peft = (["--model.peft_config", json.dumps({"class_path": "peft.LoraConfig",
                                                "init_args": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0}})]
            if args.method == "lora" else [])
    cli = SFTCLI(args=[
        "fit", "--seed_everything", str(args.seed), "--model.model_name_or_path", args.model, *peft,
        "--model.optimizer", json.dumps({"class_path": "torch.optim.AdamW",
                                         "init_args": {"lr": args.lr, "weight_decay": 0.0}}),
        "--trainer.gradient_clip_val", "1.0",  # TRL's defaults: no weight decay, gradients clipped at norm 1
        "--model.lr_schedule", "constant", "--data.train_path", args.train_path, "--data.format", "typed",
        "--data.batch_size", str(args.batch), "--data.max_length", str(args.max_length),
        "--trainer.accumulate_grad_batches", str(args.accumulate), "--trainer.max_epochs", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", args.work_dir,
        "--trainer.logger.init_args.name", "ours", "--merge.enabled", "false", "--checkpoint.monitor", "null",
        "--checkpoint.save_last", "false", "--checkpoint.save_top_k", "0", *args.ours_args])
    summary = json.loads((Path(cli.trainer.log_dir) / "summary.json").read_text())
    seconds = summary["epoch_seconds"]
    trained_loss = loss_on_records(cli.model.model, cli.model.tokenizer, args.train_path,
                                   str(cli.trainer.precision) == "bf16-mixed", args.max_length)
    return {"side": "lightning-sft", "seconds": seconds, "real_tokens": summary["tokens_per_second"] * seconds,
            "peak_mib": peak_rss_mib(), "final_loss": summary["last_step_train_loss"],
            "mean_loss": summary["final_train_loss"], "trained_loss": trained_loss,
            "precision": str(cli.trainer.precision)}


# The driver -------------------------------------------------------------------------------------------
def measure(side: str, args, work_dir: Path, train_path: Path) -> dict:
    work_dir.mkdir(parents=True, exist_ok=True)
    out = work_dir / f"{side}.json"
    command = [sys.executable, "-m", "benchmarks.vs_trl", "--side", side, "--result", str(out),
               "--train-path", str(train_path), "--work-dir", str(work_dir / side), "--method", args.method,
               "--records", str(args.records), "--batch", str(args.batch), "--accumulate", str(args.accumulate),
               "--max-length", str(args.max_length), "--lr", str(args.lr), "--seed", str(args.seed),
               "--model", args.model, *(f"--ours-args={arg}" for arg in args.ours_args)]
    subprocess.run(command, cwd=PROJECT_ROOT, check=True)
    return json.loads(out.read_text())


def tokens_per_second(result: dict) -> float:
    return result["real_tokens"] / result["seconds"]


def median_run(runs: list[dict]) -> dict:
    """The run with the median tokens/s (the lower one of the middle two for an even count), with
    every run's tokens/s beside it: single runs of 8 optimizer steps vary by ±5-15% on a CPU."""
    ordered = sorted(runs, key=tokens_per_second)
    return {**ordered[(len(ordered) - 1) // 2], "all_tokens_per_second": [tokens_per_second(run) for run in runs]}


BATCH_OPTIONS = ("--data.group_by_length", "--data.length_group_steps", "--data.padding_free",
                 "--data.max_tokens_per_batch")


def batching(ours_args: list[str]) -> str:
    """What each side's optimizer steps see: speed is compared at equal quality only if the steps
    hold the same examples (benchmarks/quality_vs_trl.py).

    >>> batching([])
    'batching: TRL random micro-batches (its default); ours the same steps, split by length (the default)'
    >>> batching(["--data.length_group_steps=25"])
    'batching: TRL random micro-batches (its default); ours --data.length_group_steps=25'
    """
    changed = any(arg.split("=")[0] in BATCH_OPTIONS for arg in ours_args)
    ours = " ".join(ours_args) if changed else "the same steps, split by length (the default)"
    return f"batching: TRL random micro-batches (its default); ours {ours}"


def table(results: list[dict], args) -> str:
    trl, ours = results
    rows = ["| side | precision | real tokens/s | peak RSS (MiB) | loss on the records after training |",
            "|---|---|---|---|---|"]
    for result in results:
        speed = tokens_per_second(result)
        rows.append(f"| {result['side']} | {result['precision']} | {speed:.1f} | {result['peak_mib']:.0f} | "
                    f"{result['trained_loss']:.4f} |")
    speed_ratio = tokens_per_second(ours) / tokens_per_second(trl)
    rows.append(f"| ours / TRL | | {speed_ratio:.2f}x | {ours['peak_mib'] / trl['peak_mib']:.2f}x | |")
    settings = (f"{args.method}, {args.records} bundled records, micro-batch {args.batch} x {args.accumulate}, "
                f"max_length {args.max_length}, lr {args.lr}, model {args.model}; {batching(args.ours_args)}")
    runs = [f"{result['side']}: " + ", ".join(f"{speed:.1f}" for speed in result["all_tokens_per_second"])
            for result in results if len(result.get("all_tokens_per_second", [])) > 1]
    notes = ["", f"Median of {args.repeats} alternating runs per side; tokens/s of each run: " + "; ".join(runs)] \
        if runs else []
    return "\n".join([settings, "", *rows, *notes, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=["lora", "full"], default="lora")
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--accumulate", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--out", help="also write the table to this Markdown file")
    parser.add_argument("--ours-args", action="append", default=[],
                        help="one more `sft fit` argument for our side (repeat), e.g. --ours-args=--model.torch_compile=true")
    parser.add_argument("--sides", default="trl,ours", help="which sides to run (the table needs both)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per side, alternating; the table shows the median")
    parser.add_argument("--side", choices=["trl", "ours"], help=argparse.SUPPRESS)  # one side, in a child process
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--train-path", help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        result = (run_trl if args.side == "trl" else run_ours)(args)
        Path(args.result).write_text(json.dumps(result))
        return
    with tempfile.TemporaryDirectory(prefix="vs-trl-") as work:
        work_dir = Path(work)
        train_path = first_records(args.records, work_dir)
        sides = args.sides.split(",")
        runs = {side: [] for side in sides}
        for repeat in range(args.repeats):  # alternating, so a slow spell of the machine hits both sides
            for side in sides:
                runs[side].append(measure(side, args, work_dir / f"run{repeat}", train_path))
        results = [median_run(runs[side]) for side in sides]
        text = table(results, args) if len(results) == 2 else json.dumps(results)
    print_and_write(text, args.out)


if __name__ == "__main__":
    main()
