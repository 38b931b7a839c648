"""Padded versus padding-free (packed) micro-batches, and a token budget, on the same records.

Each setting trains one epoch of ``sft fit`` in its own process (its own peak-memory counter), with
the settings run in turn ``--rounds`` times (alternating, so a machine shared with other work slows
each about alike); the table gives the median real tokens per second and peak RSS of each, and
their ratio to the padded run. A ratio holds across machines; an absolute CPU figure does not.

    .venv/bin/python -m benchmarks.packing --records 96 --batch 8 --max-tokens 1024 --rounds 2
    .venv/bin/python -m benchmarks.packing --records 64 --max-tokens 1280 --steps 3 --settings padded packed packed-budget

``--steps N`` times only the first N micro-batches' forward and backward (after a warm-up one), for
a machine too busy for whole epochs.

Settings: ``padded`` (right-padded rows, length-grouped: the default), ``packed``
(``data.padding_free``, the same ``--batch`` examples a micro-batch), ``packed-budget``
(``data.padding_free`` with ``data.max_tokens_per_batch``), ``padded-budget`` (a budget of rows ×
longest row). Real tokens are the examples' own tokens (no padding): the same work on every side.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.vs_trl import first_records, print_and_write

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "padded": lambda args: [],
    "packed": lambda args: ["--data.padding_free", "true"],
    "packed-budget": lambda args: ["--data.padding_free", "true", "--data.max_tokens_per_batch", str(args.max_tokens)],
    "padded-budget": lambda args: ["--data.max_tokens_per_batch", str(args.max_tokens)],
}


def run_one(args) -> dict:
    """One epoch of ``sft fit`` with LoRA in this process."""
    from lightning_app.cli import SFTCLI

    lora = {"class_path": "peft.LoraConfig", "init_args": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0}}
    cli = SFTCLI(args=[
        "fit", "--seed_everything", str(args.seed), "--model.model_name_or_path", args.model,
        "--model.peft_config", json.dumps(lora), "--model.lr_schedule", "constant",
        "--data.train_path", args.train_path, "--data.format", "typed", "--data.batch_size", str(args.batch),
        "--data.max_length", str(args.max_length), *SETTINGS[args.setting](args),
        "--trainer.accumulate_grad_batches", str(args.accumulate), "--trainer.max_epochs", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", args.work_dir,
        "--trainer.logger.init_args.name", args.setting, "--merge.enabled", "false", "--checkpoint.monitor", "null",
        "--checkpoint.save_last", "false", "--checkpoint.save_top_k", "0"])
    summary = json.loads((Path(cli.trainer.log_dir) / "summary.json").read_text())
    return {"setting": args.setting, "tokens_per_second": summary["tokens_per_second"],
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "micro_batches": len(cli.trainer.train_dataloader), "last_loss": summary["last_step_train_loss"]}


def run_steps(args) -> dict:
    """``--steps N``: the first N micro-batches of the setting's sampler, forward + backward through the
    LM head (LoRA, the machine's precision), timed after one warm-up micro-batch; no Lightning loop."""
    import time

    import torch
    from peft import LoraConfig

    from core.batch_layout import real_tokens_in
    from core.step_loss import StepTokenCounts
    from datamodules.packing import TokenBudgetBatchSampler
    from datamodules.sft_datamodule import SFTDataModule
    from modules.heads import LMHead
    from modules.backbone.loading import load_causal_lm
    from modules.peft.wrapping import apply_peft
    from modules.training.precision import choose_precision, probe, probe_kind

    options = {"padded": {}, "packed": {"padding_free": True},
               "packed-budget": {"padding_free": True, "max_tokens_per_batch": args.max_tokens},
               "padded-budget": {"max_tokens_per_batch": args.max_tokens}}[args.setting]
    datamodule = SFTDataModule(train_path=args.train_path, format="typed", batch_size=args.batch,
                               max_length=args.max_length, tokenizer_name_or_path=args.model, **options)
    datamodule.setup("fit")
    torch.manual_seed(args.seed)
    loader = datamodule.train_dataloader()
    batches = [batch for _, batch in zip(range(args.steps + 1), StepTokenCounts(loader.dataloader, 1))]
    model = apply_peft(load_causal_lm(args.model), LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0)).train()
    bf16 = choose_precision(probe_kind("auto"), probe(probe_kind("auto"))).precision == "bf16-mixed"
    seconds, tokens = 0.0, 0
    for index, batch in enumerate(batches):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = LMHead().training_loss(model, batch)["loss"]
        loss.backward()
        if index:  # the first is the warm-up
            seconds, tokens = seconds + time.perf_counter() - start, tokens + real_tokens_in(batch)
    return {"setting": args.setting, "tokens_per_second": tokens / seconds,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "micro_batches": len(loader), "last_loss": float(loss)}


def measure(setting: str, args, work_dir: Path, train_path: Path, round_index: int) -> dict:
    out = work_dir / f"{setting}-{round_index}.json"
    command = [sys.executable, "-m", "benchmarks.packing", "--setting", setting, "--result", str(out),
               "--train-path", str(train_path), "--work-dir", str(work_dir / f"{setting}-{round_index}"),
               "--records", str(args.records), "--batch", str(args.batch), "--accumulate", str(args.accumulate),
               "--max-length", str(args.max_length), "--max-tokens", str(args.max_tokens), "--seed", str(args.seed),
               "--model", args.model, "--steps", str(args.steps)]
    subprocess.run(command, cwd=PROJECT_ROOT, check=True, stdout=subprocess.DEVNULL)
    result = json.loads(out.read_text())
    print(json.dumps(result), flush=True)
    return result


def table(results: list[dict], args) -> str:
    by_setting: dict[str, list[dict]] = {}
    for result in results:
        by_setting.setdefault(result["setting"], []).append(result)
    rows = ["| setting | micro-batches | real tokens/s (median) | peak RSS (MiB, median) | speed / padded | "
            "memory / padded |", "|---|---|---|---|---|---|"]
    base = by_setting["padded"]
    base_speed = statistics.median(r["tokens_per_second"] for r in base)
    base_memory = statistics.median(r["peak_mib"] for r in base)
    for setting, runs in by_setting.items():
        speed = statistics.median(r["tokens_per_second"] for r in runs)
        memory = statistics.median(r["peak_mib"] for r in runs)
        rows.append(f"| {setting} | {runs[0]['micro_batches']} | {speed:.1f} | {memory:.0f} | "
                    f"{speed / base_speed:.2f}x | {memory / base_memory:.2f}x |")
    timed = f"the first {args.steps} micro-batches after a warm-up" if args.steps else "one sft fit epoch"
    settings = (f"LoRA r16, {args.records} bundled records, micro-batch {args.batch} (budget {args.max_tokens} "
                f"tokens) x {args.accumulate}, max_length {args.max_length}, {args.rounds} alternating rounds, "
                f"{timed}, model {args.model}")
    return "\n".join([settings, "", *rows, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--accumulate", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=1024, help="the token budget of the budget settings")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=0,
                        help="time only this many micro-batches' forward + backward (0: a whole `sft fit` epoch)")
    parser.add_argument("--out", help="also write the table to this Markdown file")
    parser.add_argument("--setting", choices=list(SETTINGS), help=argparse.SUPPRESS)  # one run, in a child process
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--train-path", help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.setting:
        Path(args.result).write_text(json.dumps(run_steps(args) if args.steps else run_one(args)))
        return
    with tempfile.TemporaryDirectory(prefix="packing-") as work:
        work_dir = Path(work)
        train_path = first_records(args.records, work_dir)
        results = [measure(setting, args, work_dir, train_path, round_index)
                   for round_index in range(args.rounds) for setting in args.settings]
    print_and_write(table(results, args), args.out)


if __name__ == "__main__":
    main()
