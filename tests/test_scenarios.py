"""Each config of configs/scenarios/ runs as its header says: fit, test, predict, on a tiny model.

The commands are read from the comment at the top of the config and run in-process as written, from
a folder where ``data/`` and ``configs/`` are the project's (so ``runs/`` and the ``--ckpt_path`` the
header names are that folder's). Overrides are appended that only shrink the run: the tiny model,
one training batch (two epochs of one for the QA user's best F1), answers of a few tokens. What each
user looks for is asserted: the checkpoint (the QA user's chosen by SQuAD F1), ``metrics.json`` with the metric of
the layout, and an answer for every record of the file to answer, in its order.
"""

import json
import shlex
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_app.cli import SFTCLI
from lightning_app.main import main

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SCENARIO_CONFIGS = sorted((PROJECT_ROOT / "configs" / "scenarios").glob("*.yaml"))
COMMAND_PREFIX = "#   sft "
RUN_COMMANDS = ("fit", "test", "predict")
# The metric names metrics.json must hold per question type, for each scenario's layout.
ROUGE = {"rouge1", "rouge2", "rougeL", "exact_match"}
EXPECTED_METRICS = {
    "typed_multi": {"choice": {"accuracy"}, "math": {"accuracy"}, "generic-generate": ROUGE,
                    "code-generate": {"pass@1"}},
    "qa_squad_lora": {"qa": {"exact_match", "f1"}},
    "math500_lora": {"math": {"accuracy"}},
    "alpaca_history_lora": {"generic-generate": ROUGE},
    "think_full": {"think": ROUGE | {"think_closed"}},
}
TINY_MODEL = {"think_full": "tiny_qwen_dir"}  # the reasoning-traces user fine-tunes a small Qwen
SHRINK = ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.enable_progress_bar", "false",
          "--data.max_length", "2048",  # the tiny tokenizer's tokens are bytes: HumanEval prompts run past 512
          "--model.generation.max_new_tokens", "4",
          "--model.generation_per_type",
          '{"code-generate": {"max_new_tokens": 4, "do_sample": true, "num_samples": 3}}']
SHRINK_FIT = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
              "--merge.enabled", "false"]
# Where a check needs more: two epochs to choose the best F1 from; the merged export to read.
FIT_EXTRA = {"qa_squad_lora": ["--trainer.max_epochs", "2", "--merge.enabled", "true"],
             "alpaca_history_lora": ["--merge.enabled", "true"]}


def header_lines(config: Path) -> list[str]:
    """The comment block at the top of ``config``."""
    lines = config.read_text(encoding="utf-8").splitlines()
    return lines[: next(index for index, line in enumerate(lines) if not line.startswith("#"))]


def header_commands(config: Path) -> list[list[str]]:
    """The ``sft ...`` commands of the header, as argument lists."""
    return [shlex.split(line[len(COMMAND_PREFIX):]) for line in header_lines(config)
            if line.startswith(COMMAND_PREFIX)]


def option_lines(config: Path) -> list[list[str]]:
    """Header lines of options alone, to add to the commands (``#   --model.peft_config null ...``)."""
    return [shlex.split(line[1:]) for line in header_lines(config) if line.startswith("#   --")]


def first_command(config: Path, subcommand: str) -> list[str]:
    return next(command for command in header_commands(config) if command[0] == subcommand)


def raw_records(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.splitlines()]


def record_ids(records: list[dict]) -> list[str]:
    """The ids answers are keyed by: the file's own (``id``, Math500's ``unique_id``), else the position."""
    return [str(record.get("id", record.get("unique_id", position))) for position, record in enumerate(records)]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def checkpoint_state(checkpoint: dict) -> dict:
    """The ModelCheckpoint callback's saved state (its key names the monitor and mode)."""
    [(key, state)] = [(key, state) for key, state in checkpoint["callbacks"].items() if "ModelCheckpoint" in key]
    return {"key": key, **state}


@pytest.fixture(autouse=True)
def _one_thread(_deterministic):
    """The tiny model's matrices are too small to share out: on a busy 2-core machine a second thread
    only waits (a 1200×32 by 32×64 linear layer: 0.12 ms on one thread, 3.3 ms on two)."""
    torch.set_num_threads(1)


@pytest.fixture
def project_folder(tmp_path, monkeypatch):
    """A working folder where configs/ and data/ are the project's: the headers' commands run unchanged."""
    for name in ("configs", "data"):
        (tmp_path / name).symlink_to(PROJECT_ROOT / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_scenario_config_is_tested_and_names_fit_test_and_predict():
    assert {config.stem for config in SCENARIO_CONFIGS} == set(EXPECTED_METRICS)
    for config in SCENARIO_CONFIGS:
        named = [command[0] for command in header_commands(config)]
        assert set(RUN_COMMANDS) <= set(named), (config.name, named)
        assert all(command[1:3] == ["--config", f"configs/scenarios/{config.name}"]
                   for command in header_commands(config) if command[0] in RUN_COMMANDS)


@pytest.mark.parametrize("config", SCENARIO_CONFIGS, ids=lambda path: path.stem)
def test_scenario_fits_tests_and_predicts_as_its_header_says(config, project_folder, request):
    settings = yaml.safe_load(config.read_text(encoding="utf-8"))
    model_dir = request.getfixturevalue(TINY_MODEL.get(config.stem, "tiny_model_dir"))
    shrink = ["--model.model_name_or_path", str(model_dir), *SHRINK]
    run_root = project_folder / settings["trainer"]["logger"]["init_args"]["save_dir"] / \
        settings["trainer"]["logger"]["init_args"]["name"]

    main([*first_command(config, "fit"), *shrink, *SHRINK_FIT, *FIT_EXTRA.get(config.stem, [])])
    fit_dir = run_root / "fit"
    check_fit(config.stem, settings, fit_dir)

    main([*first_command(config, "test"), *shrink])
    metrics = json.loads((run_root / "test" / "metrics.json").read_text())
    test_records = raw_records(project_folder / settings["data"]["test_path"])
    for question_type, names in EXPECTED_METRICS[config.stem].items():
        assert names <= set(metrics[question_type]), (question_type, metrics[question_type])
    assert sum(metrics[question_type]["count"] for question_type in EXPECTED_METRICS[config.stem]) == len(test_records)
    assert metrics["missing_predictions"] == []

    main([*first_command(config, "predict"), *shrink])
    answers = json.loads((run_root / "predict" / "predictions.json").read_text())["result"]["results"]
    predict_records = raw_records(project_folder / settings["data"]["predict_path"])
    assert [row["id"] for row in answers] == record_ids(predict_records)  # every record once, in input order
    code_ids = {row_id for row_id, record in zip(record_ids(predict_records), predict_records)
                if record.get("type") == "code-generate"}
    for row in answers:  # the typed user wants three samples of each code answer, one text for the rest
        if row["id"] in code_ids:
            assert isinstance(row["content"], list) and len(row["content"]) == 3
        else:
            assert isinstance(row["content"], str)


def check_fit(scenario: str, settings: dict, fit_dir: Path) -> None:
    """The last checkpoint holds what the method trains; the kept one is chosen by the configured monitor."""
    last = load(fit_dir / "checkpoints" / "last.ckpt")
    assert last["global_step"] >= 1
    adapter_keys = [key for key in last["state_dict"] if "lora_" in key]
    if "peft_config" in settings["model"]:  # the adapters only (and a head's own weights)
        assert adapter_keys and all("lora_" in key for key in last["state_dict"] if not key.startswith("head."))
    else:  # full fine-tuning: every weight of the model is saved
        assert not adapter_keys and any("embed_tokens" in key for key in last["state_dict"])
    monitor = settings["checkpoint"]["monitor"]
    kept = checkpoint_state(last)
    assert f"'monitor': '{monitor}'" in kept["key"] and f"'mode': '{settings['checkpoint']['mode']}'" in kept["key"]
    if scenario == "qa_squad_lora":
        check_best_by_f1(fit_dir, kept)
    if "config_overrides" in settings["model"]:  # RoPE scaling reached the model that was trained and exported
        exported = json.loads((fit_dir / "merged" / "config.json").read_text())["rope_parameters"]
        configured = settings["model"]["config_overrides"]["rope_parameters"]
        assert (exported["rope_type"], exported["factor"]) == (configured["rope_type"], configured["factor"])


def check_best_by_f1(fit_dir: Path, kept: dict) -> None:
    """best.ckpt is the epoch with the highest validation F1 (two epochs, F1 logged after each)."""
    scores = EventAccumulator(str(fit_dir)).Reload().Scalars("val/qa/f1")
    assert len(scores) == 2 and all(0.0 <= point.value <= 1.0 for point in scores)
    assert Path(kept["best_model_path"]).resolve() == (fit_dir / "checkpoints" / "best.ckpt").resolve()
    assert float(kept["best_model_score"]) == pytest.approx(max(point.value for point in scores))
    merge_report = json.loads((fit_dir / "merged" / "merge_report.json").read_text())
    assert "best.ckpt" in json.dumps(merge_report)  # the exported model is the best one, too


@pytest.mark.parametrize("config", [config for config in SCENARIO_CONFIGS if option_lines(config)],
                         ids=lambda path: path.stem)
def test_the_option_lines_of_the_header_parse_and_do_what_they_say(config, monkeypatch):
    """Lines of options a header offers to add to its commands (full AdamW / SGD, another PEFT method)."""
    monkeypatch.chdir(PROJECT_ROOT)
    for options in option_lines(config):
        cli = SFTCLI(args=["--config", str(config), *options], run=False)
        given = dict(zip(options[::2], options[1::2]))
        if "--model.peft_config" in given:
            peft_class = None if given["--model.peft_config"] == "null" else \
                json.loads(given["--model.peft_config"])["class_path"].rsplit(".", 1)[1]
            assert type(cli.model.peft_config).__name__ == ("NoneType" if peft_class is None else peft_class)
        optimizer = cli.model.optimizer_factory([torch.nn.Parameter(torch.zeros(1))])
        expected_class = given.get("--model.optimizer", "torch.optim.AdamW").rsplit(".", 1)[1]
        assert type(optimizer).__name__ == expected_class
        if "--model.optimizer.lr" in given:
            assert optimizer.defaults["lr"] == float(given["--model.optimizer.lr"])
        assert cli.trainer.logger.name == given["--trainer.logger.init_args.name"]  # each run under its own name
        if "--model.quantization" in given:
            assert cli.model.quantization == given["--model.quantization"]

