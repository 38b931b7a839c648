"""What `tensorboard --logdir runs` shows after a fit, a test and a report, read from the event files
through TensorBoard's own reader: runs named for what ran, the loss and TRL's signals as curves (the
gradient norm equal to one computed by hand before clipping), one text card of the run's fixed facts
instead of one-point charts, a table of validation answers at each validation, the report's figures
as images, and HParams sessions with real results, no placeholder hp_metric, one per run after a resume."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from callbacks.answer_table import answer_table_markdown
from lightning_app.cli import SFTCLI
from lightning_app.main import main
from tests.factories import TYPED_RECORDS, write_jsonl
from tests.tensorboard_reading import (events_of, hparams_session, hparams_session_count, hparams_table, text_cards,
                                      text_series)
from tests.test_cli import run_config  # noqa: F401 (the tiny CLI config fixture)
from tests.tolerances import reordering_bound

SIGNALS = {"train/loss", "train/loss_epoch", "train/grad_norm", "train/learning_rate", "train/mean_token_accuracy",
           "train/entropy", "train/tokens_seen", "train/trained_tokens_seen", "val/loss", "val/best_loss",
           "val/mean_token_accuracy", "val/entropy"}
CLIP = 1e-4  # far below the tiny model's gradient norm: clipping acts at every step


class GradientNormByHand(Callback):
    """The L2 norm of all gradients, summed in float64 at the moment the module logs its own (before clipping)."""

    def __init__(self):
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        squares = sum(float(p.grad.double().pow(2).sum()) for p in pl_module.parameters() if p.grad is not None)
        self.norms.append(math.sqrt(squares))


@pytest.fixture
def fitted_and_tested(run_config, tmp_path):  # noqa: F811 (the fixture imported above)
    by_hand = json.dumps([{"class_path": f"{__name__}.GradientNormByHand"}])
    cli = SFTCLI(args=["fit", "--config", run_config, "--trainer.val_check_interval", "1", "--merge.enabled", "false",
                       "--trainer.num_sanity_val_steps", "0",
                       "--trainer.gradient_clip_val", str(CLIP), "--trainer.callbacks", by_hand])
    [recorder] = [callback for callback in cli.trainer.callbacks if isinstance(callback, GradientNormByHand)]
    labelled = write_jsonl(tmp_path / "labelled.jsonl", TYPED_RECORDS)
    main(["test", "--config", run_config, "--ckpt_path", "last", "--data.test_path", labelled,
          "--model.generation_per_type", json.dumps({"code-generate": {"num_samples": 1}})])  # one code run, not 3
    runs = tmp_path / "runs" / "tiny"
    base_answers = runs / "test" / "test_answers" / "predictions.jsonl"  # any answers file: the report's other side
    main(["report", "--base", str(base_answers), "--tuned", str(runs / "test"), "--references", labelled,
          "--out", str(tmp_path / "report")])
    return SimpleNamespace(runs=runs, norms_by_hand=recorder.norms, val_records=cli.datamodule.records("val"),
                           report=tmp_path / "report")


def test_tensorboard_shows_named_runs_the_signals_text_images_and_hparams_with_results(fitted_and_tested):
    """One fit, test and report (15 s) for every check: the signals here, then the tables and images."""
    runs, norms_by_hand = fitted_and_tested.runs, fitted_and_tested.norms_by_hand
    assert sorted(path.name for path in runs.iterdir()) == ["fit", "test"]
    fit_events = events_of(runs / "fit")
    scalars = set(fit_events.Tags()["scalars"])
    assert SIGNALS <= scalars, SIGNALS - scalars
    assert not [tag for tag in scalars if tag.startswith(("data/", "model/", "train/device/", "lr-", "hp_metric"))]

    logged_norms = [point.value for point in fit_events.Scalars("train/grad_norm")]
    assert len(logged_norms) == len(norms_by_hand) == 2 and min(logged_norms) > 100 * CLIP  # before clipping
    for logged, by_hand in zip(logged_norms, norms_by_hand):  # float32 sums against float64
        assert logged == pytest.approx(by_hand, rel=reordering_bound(torch.float32))
    accuracies = [point.value for point in fit_events.Scalars("val/mean_token_accuracy")]
    assert len(accuracies) == 2 and all(0.0 <= value <= 1.0 for value in accuracies)  # a curve: 2 validations
    val_losses = [point.value for point in fit_events.Scalars("val/loss")]
    assert [point.value for point in fit_events.Scalars("val/best_loss")] == [pytest.approx(min(val_losses))]

    card = text_cards(runs / "fit")["run/facts"]
    assert "| method | LoraConfig (r 4, lora_alpha 8) |" in card and "| precision | 32-true |" in card
    assert f"| train | {len(TYPED_RECORDS)} | {len(TYPED_RECORDS)} | 0 | 0 |" in card  # records, kept, cut, dropped

    params = hparams_session(runs / "fit")
    assert (params["method"], params["peft_r"], params["peft_lora_alpha"]) == ("LoraConfig", 4, 8)
    assert (params["optimizer"], params["lr"], params["batch_size"]) == ("AdamW", pytest.approx(1e-3), 2)
    assert (params["max_steps"], params["seed"], params["train_examples"]) == (2, 7, len(TYPED_RECORDS))
    assert hparams_session(runs / "test")["test_examples"] == len(TYPED_RECORDS)
    assert "hp_metric" not in fit_events.Tags()["scalars"]
    summary = json.loads((runs / "fit" / "summary.json").read_text())
    assert summary["best_val_loss"] == pytest.approx(min(val_losses))

    # The table's columns over both runs, as TensorBoard builds them: the fit's settings and results beside
    # the test's (with a description of its own in each run, TensorBoard took one run's and lost the other's).
    differs, metric_tags = hparams_table(runs)
    assert {"lr", "optimizer", "max_steps", "train_examples", "test_examples"} <= set(differs)
    assert {"val/loss", "val/best_loss", "train/loss_epoch", "test/loss", "test/choice/accuracy",
            "test/overall/score"} <= metric_tags
    assert "hp_metric" not in metric_tags and not any(differs.values())  # the test ran with the fit's settings
    check_a_table_of_greedy_answers_beside_the_references_at_each_validation(fitted_and_tested)
    check_the_report_figures_are_images_in_the_training_run(fitted_and_tested)


def check_a_table_of_greedy_answers_beside_the_references_at_each_validation(fitted_and_tested):
    runs, val_records = fitted_and_tested.runs, fitted_and_tested.val_records
    tables = text_series(runs / "fit", "val/answers")
    assert [step for step, _ in tables] == [1, 2]  # one table per validation (val_check_interval 1, 2 steps)
    for _, table in tables:  # every validation record (2 < 4 prompts), its prompt and reference as trained
        for record in val_records:
            without_answer = answer_table_markdown([(record, "")]).splitlines()[-1].removesuffix(" |")
            assert [line for line in table.splitlines() if line.startswith(without_answer)], (without_answer, table)
        assert "2 of 2 prompts answered" in table
    # The last validation saw the weights the test answered with (the last checkpoint), greedily with the
    # same 4 new tokens: its answers are the test's (there batched, here one prompt at a time).
    test_answers = {row["id"]: row["content"] for row in map(json.loads, (
        runs / "test" / "test_answers" / "predictions.jsonl").read_text().splitlines())}
    expected = answer_table_markdown([(record, test_answers[record.id]) for record in val_records])
    assert tables[-1][1].startswith(expected + "\n"), (expected, tables[-1][1])


def check_the_report_figures_are_images_in_the_training_run(fitted_and_tested):
    events = events_of(fitted_and_tested.runs / "fit")
    assert set(events.Tags()["images"]) == {"report/scores_by_type", "report/loss_curves"}
    for tag in events.Tags()["images"]:
        [image] = events.Images(tag)
        png = (fitted_and_tested.report / f"{tag.removeprefix('report/')}.png").read_bytes()
        assert image.encoded_image_string == png and image.step == 2  # the report's file, at the run's last step
    markdown = (fitted_and_tested.report / "report.md").read_text()
    assert "![Scores per type](scores_by_type.png)" in markdown and "![Loss curves](loss_curves.png)" in markdown


def test_a_resumed_fit_is_one_hparams_session_with_its_new_budget(run_config, tmp_path):  # noqa: F811
    """Also: the sanity check answers nothing (no table at step 0 nor at the resume's step 2), and a head
    with its own learning rate logs it beside the model's, in the configured ratio at every step."""
    head = ["--model.head", json.dumps({"class_path": "modules.heads.MultiHead"}), "--model.head_lr", "0.01",
            "--merge.enabled", "false"]  # the model's lr is 1e-3
    main(["fit", "--config", run_config, *head])  # 2 steps, then validation; sanity checks on (Lightning's default)
    main(["fit", "--config", run_config, *head, "--trainer.max_steps", "4", "--ckpt_path", "last"])
    run = tmp_path / "runs" / "tiny" / "fit"
    assert hparams_session_count(run) == 1
    assert hparams_session(run)["max_steps"] == 4  # the resumed fit's, not the first's 2
    events = events_of(run)
    val_losses = [point.value for point in events.Scalars("val/loss")]
    assert len(val_losses) == 2  # one validation a fit (the sanity checks log nothing)
    assert [(point.step, point.value) for point in events.Scalars("val/best_loss")] == [(4, pytest.approx(min(val_losses)))]
    assert [step for step, _ in text_series(run, "val/answers")] == [2, 4]
    model_lr, head_lr = events.Scalars("train/learning_rate"), events.Scalars("train/learning_rate_head")
    assert [point.step for point in head_lr] == [point.step for point in model_lr] and len(head_lr) == 4
    for model_point, head_point in zip(model_lr, head_lr):  # one schedule, scaling both groups alike
        assert head_point.value == pytest.approx(10 * model_point.value, rel=1e-6)
