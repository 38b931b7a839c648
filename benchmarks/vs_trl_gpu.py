"""This trainer and TRL's ``SFTTrainer`` side by side on a GPU: the Qwen3-0.6B architecture recipe.

The GPU mode of ``benchmarks/vs_trl.py`` (issue 8). For each method (full AdamW, full SGD, LoRA r16
all-linear, QLoRA), TRL's ``SFTTrainer`` runs padded and packed (``packing=True``, BFD), and ours
runs ``sft fit`` on the method's GPU-table config (``benchmarks/gpu/qwen3_0.6b_<method>.yaml``: the
same optimizer, schedule, clipping and precision for both sides), each in its own process, one after
the other, on the same records and the same random weights (the random Qwen3-0.6B architecture in
``benchmarks/architectures/qwen3-0.6b``, prepared by ``benchmarks/gpu_prepare.sh``). One table per
method and an overall one go to stdout and ``OUT/vs_trl_gpu.md``; each run's figures and losses to
``OUT/vs_trl_gpu.json``; each run's output to ``OUT/vs_trl_gpu_logs/``.

    python -m benchmarks.vs_trl_gpu --out OUT [--methods full_adamw lora] [--ours-layouts padding_free padded]
    python -m benchmarks.vs_trl_gpu --out OUT --dry-run-cpu     # the plumbing on a CPU, tiny model

The data is made here, seeded: ``--records`` single-turn chats (messages format) whose rendered
lengths follow a lognormal (median ``--median-length``, sigma ``--sigma``) cut to
[``--min-length``, ``--max-length``], so neither side truncates anything; the answer is 25-75% of
each conversation's text. The defaults (320 records, median 300, sigma 0.6, 32-1024 tokens) give
about 115k real tokens: 40 optimizer steps of 8 sequences. TRL's padded run and ours take 8
sequences a step; TRL's packed run takes 8 rows of ``--max-length`` tokens a step (its
``per_device_train_batch_size``, as users set it), so about 15 steps. Figures (see
``vs_trl_gpu_sides.py``): real tokens/s over the steps after ``--warmup-steps``, peak CUDA memory
allocated after the model is built, MFU from real-token model FLOPs (the same per-token FLOPs on
both sides, ``callbacks/throughput.py``'s count) against the device's bf16 peak, final loss (the
mean of the last 5 steps' losses). TRL keeps its own defaults otherwise (gradient checkpointing on).
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import yaml

from benchmarks.compare_methods import METHODS, config_path, machine_line
from benchmarks.vs_trl_gpu_tables import write_tables

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = PROJECT_ROOT / "benchmarks" / "architectures" / "qwen3-0.6b"
WORDS_SOURCE = PROJECT_ROOT / "data" / "bundled" / "train.jsonl"
NEEDS_CUDA = ("qlora",)  # bitsandbytes 4-bit weights
OURS_LAYOUTS = ("padded", "padding_free", "packed_budget")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


@dataclass(frozen=True)
class Recipe:
    """The data and batch shape; the defaults are the issue's GPU recipe."""
    records: int = 320
    median_length: int = 300
    sigma: float = 0.6
    min_length: int = 32
    max_length: int = 1024
    sequences_per_step: int = 8
    warmup_steps: int = 5
    seed: int = 42


DRY_RUN = Recipe(records=16, median_length=64, min_length=40, max_length=128, sequences_per_step=4, warmup_steps=1)


# 1. The data ---------------------------------------------------------------------------------------
def rendered_length(tokenizer, messages: list[dict], generation_prompt: bool = False) -> int:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def text_of(tokenizer, words: list[str], token_count: int, rng) -> str:
    """Random words cut to about ``token_count`` tokens (a word is at least one token)."""
    ids = tokenizer(" ".join(rng.choice(words, size=max(token_count, 1))), add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids[:max(token_count, 1)]).strip() or words[0]


def synthetic_records(tokenizer, recipe: Recipe) -> list[dict]:
    """Single-turn chats whose rendered lengths follow the recipe's lognormal, none over max_length.

    >>> # [{"id": "s0", "messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}, ...]
    """
    import numpy as np

    rng = np.random.default_rng(recipe.seed)
    words = sorted(set(re.findall(r"[A-Za-z]{2,}", WORDS_SOURCE.read_text(encoding="utf-8"))))
    one = len(tokenizer("a", add_special_tokens=False)["input_ids"])
    shortest = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "a"}]
    overhead = rendered_length(tokenizer, shortest) - 2 * one  # the template's own tokens
    targets = np.clip(np.round(rng.lognormal(np.log(recipe.median_length), recipe.sigma, recipe.records)),
                      recipe.min_length, recipe.max_length).astype(int)
    records = []
    for index, target in enumerate(targets):
        content = max(int(target) - overhead, 2)
        answer = max(round(content * rng.uniform(0.25, 0.75)), 1)
        prompt_text = text_of(tokenizer, words, max(content - answer, 1), rng)
        while True:  # the cut text may re-tokenise a little longer: shorten the answer until it fits
            messages = [{"role": "user", "content": prompt_text},
                        {"role": "assistant", "content": text_of(tokenizer, words, answer, rng)}]
            excess = rendered_length(tokenizer, messages) - recipe.max_length
            if excess <= 0 or answer == 1:
                break
            answer = max(answer - excess, 1)
        records.append({"id": f"s{index}", "messages": messages})
    return records


def record_lengths(tokenizer, records: list[dict]) -> list[tuple[int, int]]:
    """(rendered tokens, trained tokens: the answer's, with its end-of-turn) of each record."""
    lengths = []
    for record in records:
        total = rendered_length(tokenizer, record["messages"])
        lengths.append((total, total - rendered_length(tokenizer, record["messages"][:-1], generation_prompt=True)))
    return lengths


# 2. FLOPs per real token (for MFU), the same for both sides -------------------------------------------
def flops_per_token(architecture: Path, method: str, lengths: list[tuple[int, int]]) -> float:
    """Model FLOPs of training on the records, per real token (callbacks/throughput.py's count:
    (4N + 2N_trainable) per token through the body, the output layer on trained tokens only,
    12·layers·width·L² per sequence for attention); QLoRA counts as LoRA (the same matmuls)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from callbacks.throughput import attention_width, matmul_parameter_counts

    config = AutoConfig.from_pretrained(architecture)
    peft_config = yaml.safe_load(config_path(method).read_text())["model"].get("peft_config")
    with torch.device("meta"):  # shapes only
        model = AutoModelForCausalLM.from_config(config)
        if peft_config:  # ours: no target_modules means all linear layers, as TRL's side is given
            rank = peft_config["init_args"]["r"]
            model = get_peft_model(model, LoraConfig(r=rank, target_modules="all-linear", task_type="CAUSAL_LM"))
    (body, body_trainable), (output, output_trainable) = matmul_parameter_counts(model)
    layers, width = attention_width(config)
    total = sum((4 * body + 2 * body_trainable) * length + (4 * output + 2 * output_trainable) * trained
                + 12 * layers * width * length**2 for length, trained in lengths)
    return total / sum(length for length, _ in lengths)


# 3. The runs, each in its own process ------------------------------------------------------------------
def planned_runs(methods: list[str], ours_layouts: list[str], dry_run: bool) -> list[dict]:
    runs = []
    for method in methods:
        if dry_run and method in NEEDS_CUDA:
            continue
        runs += [{"method": method, "side": "trl", "layout": layout} for layout in ("padded", "packed")]
        runs += [{"method": method, "side": "ours", "layout": layout} for layout in ours_layouts]
    return runs


def layout_options(layout: str, recipe: Recipe) -> list[str]:
    """``sft fit`` options of our batch layouts; packed_budget fills a step with TRL packed's tokens."""
    from inspect import signature

    from datamodules.sft_datamodule import SFTDataModule

    if layout != "padded" and not {"padding_free", "max_tokens_per_batch"} <= set(signature(SFTDataModule).parameters):
        raise ValueError(f"--ours-layouts {layout}: this datamodule has no data.padding_free/max_tokens_per_batch")
    return {"padded": [], "padding_free": ["--data.padding_free", "true"],
            "packed_budget": ["--data.padding_free", "true", "--data.max_tokens_per_batch",
                              str(recipe.sequences_per_step * recipe.max_length)]}[layout]


def run_one(run: dict, settings: dict, work_dir: Path, logs_dir: Path, timeout: float) -> dict:
    """One side in a child process; its figures, or why there are none."""
    name = f"{run['method']}_{run['side']}_{run['layout']}"
    spec = {**settings, **run, "work_dir": str(work_dir / name), "result_path": str(work_dir / f"{name}.json"),
            "method_config": str(config_path(run["method"])),
            "layout_options": layout_options(run["layout"], settings["recipe"]) if run["side"] == "ours" else [],
            "recipe": asdict(settings["recipe"])}
    spec_path = work_dir / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    print(f"=== {name} (timeout {timeout:.0f} s)", flush=True)
    started = time.perf_counter()
    with (logs_dir / f"{name}.log").open("w") as log:
        try:
            status = subprocess.run([sys.executable, "-m", "benchmarks.vs_trl_gpu", "--side-spec", str(spec_path)],
                                    cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            status = "timeout"
    wall = time.perf_counter() - started
    if status != 0:
        reason = last_error_line((logs_dir / f"{name}.log").read_text(errors="replace"))
        print(f"!!! {name} failed ({status}) after {wall:.0f} s: {reason}", flush=True)
        return {**run, "error": f"exit {status}: {reason[:300]}"}
    result = {**run, **json.loads(Path(spec["result_path"]).read_text()), "wall_seconds": wall}
    print(f"    {result['tokens_per_second'] or 0:.0f} real tokens/s, peak {result['peak_mib']:.0f} MiB, "
          f"{result['real_tokens']} real tokens in {result['steps']} steps, {wall:.0f} s", flush=True)
    return result


def last_error_line(log: str) -> str:
    """The exception line of a child's traceback (its start: a message may run over several lines)."""
    lines = log.strip().splitlines() or [""]
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", line)]
    return (errors or lines)[-1]


def run_all(args, recipe: Recipe, architecture: Path, records: list[dict], out: Path) -> list[dict]:
    started = time.monotonic()
    settings = {"architecture": str(architecture), "device": "cpu" if args.dry_run_cpu else "cuda",
                "precision": "32-true" if args.dry_run_cpu else "bf16-mixed", "seed": recipe.seed,
                "max_length": recipe.max_length, "warmup_steps": recipe.warmup_steps, "recipe": recipe,
                "extra_options": args.ours_options}
    logs_dir = out / "vs_trl_gpu_logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="vs-trl-gpu-") as work:
        work_dir = Path(work)
        settings["train_path"] = str(work_dir / "train.jsonl")
        lines = [json.dumps(record) + "\n" for record in records]
        (work_dir / "train.jsonl").write_text("".join(lines), encoding="utf-8")
        for run in planned_runs(args.methods, args.ours_layouts, args.dry_run_cpu):
            rows = recipe.sequences_per_step if run["layout"] != "packed" else args.trl_packed_rows
            left = None if args.deadline_s is None else args.deadline_s - (time.monotonic() - started)
            if left is not None and left < args.min_run_s:
                results.append({**run, "error": f"not run: {max(left, 0):.0f} s left of --deadline-s"})
                print(f"!!! {run['method']} {run['side']} {run['layout']}: skipped, out of time", flush=True)
                continue
            timeout = args.run_timeout_s if left is None else min(args.run_timeout_s, left)
            results.append(run_one({**run, "rows_per_step": rows}, settings, work_dir, logs_dir, timeout))
    return results


def data_summary(tokenizer, records: list[dict], architecture: Path, methods: list[str]) -> dict:
    """The records' lengths and each method's FLOPs per real token."""
    lengths = record_lengths(tokenizer, records)
    totals = sorted(length for length, _ in lengths)
    return {"records": len(lengths), "real_tokens": sum(totals), "trained_tokens": sum(t for _, t in lengths),
            "median_length": totals[len(totals) // 2], "min_length": totals[0], "max_length": totals[-1],
            "flops_per_token": {method: flops_per_token(architecture, method, lengths) for method in methods}}


# 4. The dry run's tiny architecture ---------------------------------------------------------------------
def tiny_architecture(architecture: Path, folder: Path) -> Path:
    """A 2-layer copy of ``architecture`` (its tokenizer, its vocabulary) for the CPU dry run."""
    if not (architecture / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"{architecture} has no tokenizer files: run `bash benchmarks/gpu_prepare.sh` (or "
                                f"`python benchmarks/prepare_architecture.py {architecture}`) first")
    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (architecture / name).is_file():
            shutil.copy(architecture / name, folder / name)
    config = json.loads((architecture / "config.json").read_text())
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 8}
    config.update({key: min(value, config.get(key, value)) for key, value in small.items()})
    config.pop("layer_types", None)  # one entry per layer in recent configs; rebuilt from the layer count
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


# The command ------------------------------------------------------------------------------------------
def missing_packages(methods: list[str], dry_run: bool) -> list[str]:
    """What TRL's side imports that the GPU image may lack (benchmarks/gpu_prepare.sh fetches them)."""
    from importlib.util import find_spec

    needed = ["trl", "datasets", "xxhash", "pandas", "dill", "multiprocess"]
    needed += ["bitsandbytes"] if not dry_run and any(method in NEEDS_CUDA for method in methods) else []
    return [package for package in needed if find_spec(package) is None]


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for vs_trl_gpu.md, vs_trl_gpu.json and the runs' logs")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--ours-layouts", nargs="+", choices=OURS_LAYOUTS, default=["padding_free"],
                        help="our batch layouts, each its own run: padded, padding_free (data.padding_free, "
                             "the same 8 sequences a step), packed_budget (padding_free with "
                             "data.max_tokens_per_batch = sequences per step x max length) (default: %(default)s)")
    parser.add_argument("--ours-options", nargs=argparse.REMAINDER, default=[],
                        help="last: options added to our sft fit, e.g. --model.liger_kernels true")
    parser.add_argument("--architecture", type=Path, default=ARCHITECTURE, help="default: %(default)s")
    parser.add_argument("--trl-packed-rows", type=int, default=8, help="TRL packed rows a step (default: %(default)s)")
    parser.add_argument("--dry-run-cpu", action="store_true",
                        help="the plumbing on a CPU: a 2-layer copy of the architecture, a few short records, no QLoRA")
    parser.add_argument("--deadline-s", type=float, help="start no run after this many seconds (less --min-run-s)")
    parser.add_argument("--min-run-s", type=float, default=60.0,
                        help="time a run needs at least (default: %(default)s)")
    parser.add_argument("--run-timeout-s", type=float, default=300.0, help="per run (default: %(default)s)")
    for field, default in asdict(Recipe()).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(default), help=f"default: {default} "
                            f"(dry run: {getattr(DRY_RUN, field)})")
    parser.add_argument("--side-spec", type=Path, help=argparse.SUPPRESS)  # one side, in a child process
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from core.tokenizer import load_tokenizer

    args = parse_args(argv)
    if args.side_spec:
        from benchmarks.vs_trl_gpu_sides import run_side

        run_side(args.side_spec)
        return 0
    if args.out is None:
        raise SystemExit("--out is required")
    args.architecture = args.architecture.resolve()  # the runs start in the project root
    base = DRY_RUN if args.dry_run_cpu else Recipe()
    given = {field: getattr(args, field) for field in asdict(base) if getattr(args, field) is not None}
    recipe = replace(base, **given)
    if missing := missing_packages(args.methods, args.dry_run_cpu):
        raise SystemExit(f"vs_trl_gpu: {', '.join(missing)} not installed: add the wheels to benchmarks/gpu_prepare.sh "
                         "(or pip install them) and carry .whl again")
    for layout in args.ours_layouts:
        layout_options(layout, recipe)  # a layout this datamodule lacks stops here, before any run
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vs-trl-gpu-arch-") as scratch:
        architecture = tiny_architecture(args.architecture, Path(scratch)) if args.dry_run_cpu else args.architecture
        if not (architecture / "tokenizer_config.json").is_file():
            raise SystemExit(f"{architecture} has no tokenizer files: run `bash benchmarks/gpu_prepare.sh` here "
                             "and carry the folder to the GPU machine")
        print(f"machine: {machine_line()}", flush=True)
        tokenizer = load_tokenizer(str(architecture))
        records = synthetic_records(tokenizer, recipe)  # the same records for every run
        summary = data_summary(tokenizer, records, architecture, args.methods)
        print(f"data: {summary['records']} records, {summary['real_tokens']} real tokens "
              f"({summary['trained_tokens']} trained), median length {summary['median_length']}", flush=True)
        results = run_all(args, recipe, architecture, records, args.out)
    text = write_tables(results, summary, recipe, args, args.out)
    print("\n" + text)
    return 1 if any("error" in result and not result["error"].startswith("not run") for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
