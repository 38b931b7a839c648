"""One Markdown text card per fit with the facts that do not change while it runs: model, PEFT method,
trainable parameters, precision, batch, and what preprocessing did to each split (kept, truncated,
dropped, lengths, trained tokens).

One-point scalar charts of these (``data/train_kept`` at step 0, eighteen of them) were the first
thing TensorBoard showed, ahead of the loss; as a card they sit in the Text tab, and the run summary
puts the ones runs are compared by into the HParams table (``callbacks/run_summary.py``). Loggers
without text (CSV, MLflow, W&B) get those hyperparameters only. The same split figures are printed
when the splits are built.
"""

from dataclasses import asdict

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from core.tables import markdown_table

CARD_TAG = "run/facts"


class RunCard(Callback):
    def on_fit_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        card = run_card_markdown(run_facts(trainer, pl_module), getattr(trainer.datamodule, "token_stats", {}) or {})
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text(CARD_TAG, card, global_step=trainer.global_step)


def run_facts(trainer, pl_module) -> dict[str, str]:
    """What was trained and how, as a person reads it (``LoraConfig (r 16, alpha 32)``, ``3.5% of ...``)."""
    datamodule, peft_config = trainer.datamodule, pl_module.peft_config
    method = "full fine-tuning" if peft_config is None else type(peft_config).__name__
    size = ", ".join(f"{name} {getattr(peft_config, name)}" for name in ("r", "lora_alpha", "num_virtual_tokens")
                     if isinstance(getattr(peft_config, name, None), (int, float)))
    return {
        "model": str(pl_module.model_name_or_path),
        "method": f"{method} ({size})" if size else method,
        "trainable parameters": f"{pl_module.trainable_parameters:,} of {pl_module.total_parameters:,} "
                                f"({100 * pl_module.trainable_share:.3f}%)",
        "precision": str(trainer.precision),
        "batch": f"{getattr(datamodule, 'batch_size', None)} x {trainer.accumulate_grad_batches} accumulated",
        "max_length": str(getattr(datamodule, "max_length", None)),
    }


def run_card_markdown(facts: dict[str, str], stats_by_split: dict) -> str:
    """The facts as a two-column table, then one row per split of what preprocessing did.

    >>> print(run_card_markdown({"model": "tiny"}, {}))
    | fact | value |
    |---|---|
    | model | tiny |
    """
    card = markdown_table(["fact", "value"], [[name, value] for name, value in facts.items()])
    if stats_by_split:
        names = list(asdict(next(iter(stats_by_split.values()))))
        rows = [[split, *(_figure(value) for value in asdict(stats).values())] for split, stats in stats_by_split.items()]
        card += "\n\n" + markdown_table(["split", *names], rows)
    return card


def _figure(value) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)
