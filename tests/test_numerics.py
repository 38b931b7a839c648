"""Non-finite steps stop the run (or are skipped) before the optimizer applies them; explosions warn."""

import math
import warnings
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from callbacks.numerics import Numerics, NonFiniteStepError
from lightning_app.main import main
from modules.heads.lm import LMHead
from tests.test_cli import run_config  # noqa: F401  (the fixture: a tiny model, LoRA, 4 typed records)


@pytest.fixture
def nan_on_second_step(monkeypatch) -> list:
    """The head's loss is nan on its second training call (batches of 2, no accumulation: step index 1);
    returns the ids of that batch once it has run."""
    original, calls, nan_batch_ids = LMHead.training_loss, [], []

    def training_loss(self, model, batch):
        losses = original(self, model, batch)
        calls.append(1)
        if len(calls) == 2:
            nan_batch_ids.extend(batch["ids"])
            losses["loss"] = losses["loss"] * float("nan")  # still in the graph: the gradients are nan too
        return losses

    monkeypatch.setattr(LMHead, "training_loss", training_loss)
    return nan_batch_ids


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def every_step(run_config: str) -> list[str]:
    return ["fit", "--config", run_config, "--trainer.max_steps", "4", "--checkpoint.every_n_train_steps", "1"]


def test_a_nan_step_stops_the_run_naming_step_and_ids_and_keeps_the_good_checkpoint(
        run_config, tmp_path, nan_on_second_step):
    with pytest.raises(NonFiniteStepError) as stopped:
        main(every_step(run_config))
    message = str(stopped.value)
    assert "\n" not in message
    assert "loss nan" in message and "at global step 1 " in message
    assert f"(batch ids: {', '.join(nan_on_second_step)})" in message and len(nan_on_second_step) == 2
    last = load(tmp_path / "runs" / "tiny" / "fit" / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 1  # the step before; the broken one was never taken nor saved
    assert all(torch.isfinite(weight).all() for weight in last["state_dict"].values())


def test_skip_mode_drops_the_step_and_counts_it(run_config, tmp_path, nan_on_second_step):
    with pytest.warns(UserWarning, match=r"skipped a non-finite training step: loss nan.* at global step 1 "):
        main([*every_step(run_config), "--numerics.on_nonfinite", "skip", "--trainer.gradient_clip_val", "1.0"])
    run_dir = tmp_path / "runs" / "tiny" / "fit"
    last = load(run_dir / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 4  # the run went on to the end
    assert all(torch.isfinite(weight).all() for weight in last["state_dict"].values())
    adam_steps = {int(state["step"]) for state in last["optimizer_states"][0]["state"].values()}
    assert adam_steps == {3}  # AdamW took 3 of the 4 steps: the nan one left weights and moments alone
    assert last["callbacks"]["Numerics"]["skipped_steps"] == 1
    logged = EventAccumulator(str(run_dir)).Reload().Scalars("train/skipped_steps")
    assert [(point.step, point.value) for point in logged] == [(0, 0), (1, 1), (2, 1), (3, 1)]
    events = EventAccumulator(str(run_dir)).Reload()
    # the skipped step's nan loss is never logged, so the curves and the epoch mean stay finite
    assert all(math.isfinite(point.value) for point in events.Scalars("train/loss"))
    assert all(math.isfinite(point.value) for point in events.Scalars("train/loss_epoch"))


def test_an_exploding_loss_warns_at_most_once_every_n_steps():
    numerics = Numerics(explode_factor=10, warn_every_n_steps=3)
    losses = [2.0] * 5 + [50.0, 60.0, 2.0, 2.0, 300.0]  # explosions at steps 5, 6 (too soon to warn again), 9
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step, loss in enumerate(losses):
            numerics._check_explosion(loss, step, [f"r{step}"])
    messages = [str(warning.message) for warning in caught]
    assert len(messages) == 2
    assert messages[0].startswith("loss 50 at global step 5 is 25.0x its running mean 2 (batch ids: r5)")
    assert "at global step 9 " in messages[1]
