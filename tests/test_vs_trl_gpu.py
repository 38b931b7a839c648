"""The GPU side-by-side benchmark's plumbing (benchmarks/vs_trl_gpu.py), on a CPU: its synthetic data,
and the whole dry run (TRL padded and packed, ours, each in its own process) on a tiny Qwen3
architecture, down to the tables."""

import json
import subprocess
import sys

import pytest

from benchmarks import vs_trl_gpu, vs_trl_gpu_tables
from core.tokenizer import load_tokenizer
from tests.factories import PreimportedProcess
from tests.test_callbacks_metrics import table_cells
from tests.test_gpu_compare import tiny_architecture  # noqa: F401  (a fixture: the folder gpu_prepare.sh makes)

RECIPE = vs_trl_gpu.Recipe(records=200, median_length=300, sigma=0.6, min_length=32, max_length=1024)


def test_synthetic_records_follow_the_recipe_and_fit_the_length(tiny_architecture):  # noqa: F811
    tokenizer = load_tokenizer(str(tiny_architecture))
    records = vs_trl_gpu.synthetic_records(tokenizer, RECIPE)
    assert records == vs_trl_gpu.synthetic_records(tokenizer, RECIPE)  # seeded: both sides get the same
    assert [[m["role"] for m in record["messages"]] for record in records] == [["user", "assistant"]] * 200
    lengths = vs_trl_gpu.record_lengths(tokenizer, records)
    totals = sorted(total for total, _ in lengths)
    assert 32 <= totals[0] and totals[-1] <= 1024  # nothing for either side to cut
    assert 270 <= totals[100] <= 330  # the lognormal's median, ~300
    shares = [trained / total for total, trained in lengths]
    assert 0.15 < min(shares) and max(shares) < 0.85 and 0.4 < sum(shares) / len(shares) < 0.6


def overall_rows(markdown: str) -> list[dict]:
    section = markdown.split("### Overall")[1].split("Goals:")[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = table_cells(lines[0])
    return [dict(zip(header, table_cells(line))) for line in lines[2:]]


class PreimportedSides:
    """What the driver uses of ``subprocess``: each side still runs as ``python -m benchmarks.vs_trl_gpu
    --side-spec ...`` in a process of its own, forked with torch, transformers, TRL and Lightning
    imported (tests/factories.py) instead of importing them three times."""

    STDOUT, TimeoutExpired = subprocess.STDOUT, subprocess.TimeoutExpired

    @staticmethod
    def run(command, cwd, stdout, stderr, timeout) -> subprocess.CompletedProcess:
        assert command[0] == sys.executable and stderr == subprocess.STDOUT
        process = PreimportedProcess(command[1:], cwd=cwd, stdout_path=stdout.name, stderr_path=stdout.name)
        try:
            return subprocess.CompletedProcess(command, process.wait(timeout))
        finally:
            process.kill()


@pytest.fixture(scope="module")
def dry_run(tiny_architecture, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("vs-trl-gpu")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vs_trl_gpu, "subprocess", PreimportedSides)
        status = vs_trl_gpu.main(["--dry-run-cpu", "--architecture", str(tiny_architecture), "--out", str(out),
                                  "--methods", "lora", "qlora"])
    return status, out


def test_dry_run_trains_both_sides_on_the_same_tokens_and_tabulates_them(dry_run):
    status, out = dry_run
    markdown, figures = (out / "vs_trl_gpu.md").read_text(), json.loads((out / "vs_trl_gpu.json").read_text())
    runs = figures["runs"]
    assert status == 0 and [(r["method"], r["side"], r["layout"]) for r in runs] == [
        ("lora", "trl", "padded"), ("lora", "trl", "packed"), ("lora", "ours", "padding_free")]  # no QLoRA on a CPU
    assert not any("error" in run for run in runs)
    # the same records everywhere: every sequence once, the same real tokens as the data's rendering
    assert {run["real_tokens"] for run in runs} == {figures["data"]["real_tokens"]}
    assert {run["sequences"] for run in runs} == {vs_trl_gpu.DRY_RUN.records}
    steps = [run["steps"] for run in runs]  # 16 records, 4 a step; TRL packed: 8 rows of 128 tokens a step
    assert steps == [4, 2, 4]  # TRL packs the 1,156 tokens into 10 rows: a step of 8, then 2
    for run in runs:
        assert run["tokens_per_second"] > 0 and run["peak_memory_kind"] == "cpu_rss"
        assert len(run["losses"]) == run["steps"] and run["final_loss"] > 0
    assert "Every run trained the same" in markdown and "Not run on a CPU: qlora" in markdown
    (row,) = overall_rows(markdown)
    assert (row["method"], row["ours (layout)"], row["goals"]) == ("lora", "padding-free", "n/a (CPU)")
    assert row["ours / TRL packed"].endswith("x") and row["ours MFU"] == "n/a"
    method_lines = [line for line in markdown.split("### lora")[1].splitlines() if line.startswith("| ")]
    assert [table_cells(line)[:2] for line in method_lines[1:]] == [
        ["TRL SFTTrainer", "padded"], ["TRL SFTTrainer", "packed (BFD)"], ["lightning-sft", "padding-free"]]
    assert sorted(path.name for path in (out / "vs_trl_gpu_logs").iterdir()) == [
        "lora_ours_padding_free.log", "lora_trl_packed.log", "lora_trl_padded.log"]


def test_goals_are_held_to_trl_packed_speed_and_trl_padded_memory():
    def run(method, side, layout, tokens_per_second, peak_gib):
        return {"method": method, "side": side, "layout": layout, "tokens_per_second": tokens_per_second,
                "peak_mib": peak_gib * 1024, "peak_memory_kind": "cuda_allocated", "peak_flops": 1e12}

    results = [run("lora", "trl", "padded", 100, 20), run("lora", "trl", "packed", 150, 24),
               run("lora", "ours", "padding_free", 480, 18),
               run("qlora", "trl", "padded", 100, 15), {**run("qlora", "trl", "packed", 0, 0), "error": "exit 1"},
               run("qlora", "ours", "padding_free", 250, 12)]
    summary = {"flops_per_token": {"lora": 1e9, "qlora": 1e9}}  # MFU = tokens/s x 1e9 / 1e12
    lora, qlora = overall_rows("### Overall\n" + vs_trl_gpu_tables.overall_table(results, ["lora", "qlora"], summary))
    assert (lora["ours / TRL packed"], lora["memory ours / TRL padded"], lora["ours MFU"]) == ("3.20x", "0.90x", "48.0%")
    assert lora["goals"] == "met"
    # TRL's packed QLoRA run failed: its padded run is the reference; QLoRA's memory goal is 10 GiB
    assert qlora["ours / TRL packed"] == "2.50x" and qlora["TRL packed tokens/s"] == "n/a"
    assert qlora["goals"] == "speed 2.50x < 3x; memory 12.0 GiB >= 10; MFU 25.0% < 30%"
