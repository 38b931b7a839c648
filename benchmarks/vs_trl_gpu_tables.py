"""The tables of ``benchmarks/vs_trl_gpu.py``: one per method and an overall one, in Markdown.

Ratios are ours over TRL's: tokens/s against TRL's packed run (its padded one where packed failed),
peak memory against TRL's padded run. The goals of issue 8 are checked in the overall table.
"""

import json
from dataclasses import asdict
from pathlib import Path

from benchmarks.compare_methods import machine_line
from core.tables import markdown_table

GIB = 1024  # MiB
SIDE_NAMES = {"trl": "TRL SFTTrainer", "ours": "lightning-sft"}
LAYOUT_NAMES = {"packed": "packed (BFD)", "padded": "padded", "padding_free": "padding-free",
                "packed_budget": "padding-free, token budget"}
# Measured earlier with TRL 1.16 on an H100: (tokens/s, peak GiB allocated).
TRL_ANCHORS = {("full_adamw", "padded"): (10_170, 21.2), ("full_adamw", "packed"): (15_581, 24.3),
               ("lora", "padded"): (11_468, 18.3), ("lora", "packed"): (16_131, 21.4),
               ("qlora", "padded"): (9_573, 15.4)}
SPEED_GOAL, QLORA_MEMORY_GOAL_GIB, MFU_GOAL = 3.0, 10.0, 0.30


def figure(value, form: str) -> str:
    return "n/a" if value is None else form.format(value)


def mfu(result: dict, summary: dict) -> float | None:
    if not result.get("peak_flops") or not result.get("tokens_per_second"):
        return None
    return result["tokens_per_second"] * summary["flops_per_token"][result["method"]] / result["peak_flops"]


def trl_references(results: list[dict], method: str) -> tuple[dict | None, dict | None]:
    """(TRL's run to compare speed with: packed, else padded; TRL's padded run for memory)."""
    finished = {r["layout"]: r for r in results if r["method"] == method and r["side"] == "trl" and "error" not in r}
    return finished.get("packed", finished.get("padded")), finished.get("padded")


def ratios(result: dict, speed_reference: dict | None, memory_reference: dict | None):
    """(tokens/s over the speed reference's, peak memory over the memory reference's); None where unknown."""
    speeds = result.get("tokens_per_second"), (speed_reference or {}).get("tokens_per_second")
    speed = speeds[0] / speeds[1] if all(speeds) else None
    memory = result["peak_mib"] / memory_reference["peak_mib"] if memory_reference else None
    return speed, memory


def method_table(results: list[dict], method: str, summary: dict) -> str:
    speed_reference, memory_reference = trl_references(results, method)
    header = ["side", "layout", "steps", "real tokens", "real tokens/s", "peak memory (GiB)", "MFU",
              "final loss", "tokens/s vs TRL packed", "memory vs TRL padded"]
    rows = []
    for result in (r for r in results if r["method"] == method):
        name, layout = SIDE_NAMES[result["side"]], LAYOUT_NAMES[result["layout"]]
        if "error" in result:
            rows.append([name, layout, "failed", result["error"].replace("|", "/"), *[""] * 6])
            continue
        speed, memory = ratios(result, speed_reference, memory_reference)
        rows.append([name, layout, str(result["steps"]), str(result["real_tokens"]),
                     figure(result["tokens_per_second"], "{:,.0f}"), figure(result["peak_mib"] / GIB, "{:.2f}"),
                     figure(mfu(result, summary), "{:.1%}"), figure(result["final_loss"], "{:.4f}"),
                     figure(speed, "{:.2f}x"), figure(memory, "{:.2f}x")])
    return f"### {method}\n\n" + markdown_table(header, rows) + "\n"


def goal_check(result: dict, speed: float | None, memory: float | None, method: str, summary: dict) -> str:
    """Issue 8's goals: >= 3x TRL packed at no more memory than TRL padded (QLoRA: >= 3x TRL QLoRA,
    under 10 GiB), MFU >= 30%; "n/a" on a CPU (no memory or MFU figure to hold them to)."""
    if result["peak_memory_kind"] != "cuda_allocated":
        return "n/a (CPU)"
    misses = []
    if speed is None or speed < SPEED_GOAL:
        misses.append(f"speed {figure(speed, '{:.2f}x')} < {SPEED_GOAL:.0f}x")
    if method == "qlora" and result["peak_mib"] / GIB >= QLORA_MEMORY_GOAL_GIB:
        misses.append(f"memory {result['peak_mib'] / GIB:.1f} GiB >= {QLORA_MEMORY_GOAL_GIB:.0f}")
    elif method != "qlora" and (memory is None or memory > 1.0):
        misses.append(f"memory {figure(memory, '{:.2f}x')} > TRL padded")
    utilisation = mfu(result, summary)
    if utilisation is None or utilisation < MFU_GOAL:
        misses.append(f"MFU {figure(utilisation, '{:.1%}')} < {MFU_GOAL:.0%}")
    return "met" if not misses else "; ".join(misses)


def overall_table(results: list[dict], methods: list[str], summary: dict) -> str:
    header = ["method", "ours (layout)", "ours tokens/s", "TRL padded tokens/s", "TRL packed tokens/s",
              "ours / TRL packed", "ours peak (GiB)", "TRL padded peak (GiB)", "memory ours / TRL padded",
              "ours MFU", "goals"]
    rows = []
    for method in methods:
        speed_reference, memory_reference = trl_references(results, method)
        trl = {r["layout"]: r for r in results if r["method"] == method and r["side"] == "trl" and "error" not in r}
        for result in (r for r in results if r["method"] == method and r["side"] == "ours"):
            if "error" in result:
                rows.append([method, LAYOUT_NAMES[result["layout"]], "failed", *[""] * 8])
                continue
            speed, memory = ratios(result, speed_reference, memory_reference)
            rows.append([method, LAYOUT_NAMES[result["layout"]], figure(result["tokens_per_second"], "{:,.0f}"),
                         figure(trl.get("padded", {}).get("tokens_per_second"), "{:,.0f}"),
                         figure(trl.get("packed", {}).get("tokens_per_second"), "{:,.0f}"),
                         figure(speed, "{:.2f}x"), figure(result["peak_mib"] / GIB, "{:.2f}"),
                         figure(memory_reference and memory_reference["peak_mib"] / GIB, "{:.2f}"),
                         figure(memory, "{:.2f}x"), figure(mfu(result, summary), "{:.1%}"),
                         goal_check(result, speed, memory, method, summary)])
    return markdown_table(header, rows) + "\n"


def same_tokens_line(results: list[dict], summary: dict) -> str:
    counts = {f"{r['method']} {r['side']} {r['layout']}": r["real_tokens"] for r in results if "error" not in r}
    if set(counts.values()) <= {summary["real_tokens"]}:
        return f"Every run trained the same {summary['real_tokens']:,} real tokens."
    return ("**Real-token counts differ** (the records hold " f"{summary['real_tokens']:,}): "
            + ", ".join(f"{name} {count:,}" for name, count in counts.items()))


def write_tables(results: list[dict], summary: dict, recipe, args, out: Path) -> str:
    """The Markdown (returned, and written to OUT/vs_trl_gpu.md) and the figures (OUT/vs_trl_gpu.json)."""
    trl_checkpointing = {r.get("gradient_checkpointing") for r in results if r["side"] == "trl" and "error" not in r}
    memory_kind = {r["peak_memory_kind"] for r in results if "error" not in r}
    lines = [
        "## This trainer vs TRL's SFTTrainer on a GPU (benchmarks/vs_trl_gpu.py)", "",
        f"Measured on {machine_line()}.", "",
        f"Data: {summary['records']} synthetic single-turn chats, {summary['real_tokens']:,} real tokens "
        f"({summary['trained_tokens']:,} trained), rendered lengths {summary['min_length']}-{summary['max_length']} "
        f"(median {summary['median_length']}; lognormal, median {recipe.median_length}, sigma {recipe.sigma}); "
        f"{recipe.sequences_per_step} sequences a step (TRL packed: {args.trl_packed_rows} rows of "
        f"{recipe.max_length} tokens); tokens/s over the steps after the first {recipe.warmup_steps}; "
        f"model {args.architecture.name} with random weights"
        f"{' (2-layer copy: CPU dry run)' if args.dry_run_cpu else ''}; "
        f"optimizer, schedule and precision of benchmarks/gpu/qwen3_0.6b_<method>.yaml on both sides; "
        f"TRL gradient checkpointing: {', '.join(map(str, sorted(trl_checkpointing))) or 'n/a'} (its default); "
        f"peak memory: {', '.join(sorted(memory_kind)) or 'n/a'}; final loss: mean of the last 5 steps.", "",
        "### Overall", "", overall_table(results, args.methods, summary),
        f"Goals: ours >= {SPEED_GOAL:.0f}x TRL packed tokens/s at no more peak memory than TRL padded; QLoRA >= "
        f"{SPEED_GOAL:.0f}x TRL QLoRA under {QLORA_MEMORY_GOAL_GIB:.0f} GiB; MFU >= {MFU_GOAL:.0%}. "
        + same_tokens_line(results, summary), "",
        "Earlier TRL 1.16 figures on an H100 (tokens/s, GiB): "
        + "; ".join(f"{method} {layout} {speed:,} ({memory})"
                    for (method, layout), (speed, memory) in TRL_ANCHORS.items())
        + ".", "",
        *[f"Not run on a CPU: {method} (bitsandbytes 4-bit weights need CUDA).\n" for method in args.methods
          if not any(r["method"] == method for r in results)],
        *[method_table(results, method, summary) for method in args.methods
          if any(r["method"] == method for r in results)],
    ]
    text = "\n".join(lines)
    (out / "vs_trl_gpu.md").write_text(text, encoding="utf-8")
    (out / "vs_trl_gpu.json").write_text(json.dumps({"recipe": asdict(recipe), "data": summary, "runs": results},
                                                    indent=2), encoding="utf-8")
    return text
