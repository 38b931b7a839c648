"""At each validation, a few fixed validation prompts with their reference and the model's greedy answer,
as one Markdown table in TensorBoard's Text tab (``val/answers``, one table per validation step).

The answers a model gives are the first thing a fine-tuner checks, and a loss curve does not show them.
On by default and cheap: ``num_prompts`` prompts (one of each question type first, the same ones at
every validation), greedy, at most ``max_new_tokens`` new tokens each, one prompt at a time, and no new
prompt started once the next would likely end after ``max_seconds`` (the table says how many were
answered and in how long). Not at the sanity check, never in test or predict, and not under a sharded
strategy (FSDP, ZeRO-3: generation needs whole weights). ``--answer_table.num_prompts 0`` turns it off.
Scoring validation answers as a metric is ``validation_answers.py``'s (off by default).
"""

import time

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import move_data_to_device, rank_zero_info

from core.tables import markdown_table
from modules.generation.merged_adapters import adapters_merged
from modules.training.sharding import shards_parameters

TABLE_TAG = "val/answers"
CELL_CHARACTERS = 200  # a longer prompt, reference or answer is cut: the table stays readable in a browser


class AnswerTable(Callback):
    def __init__(self, num_prompts: int = 4, max_new_tokens: int = 32, max_seconds: float = 10.0):
        """
        Args:
            num_prompts: Validation prompts answered at each validation and shown as a table (0: off).
            max_new_tokens: Longest answer, in tokens (a type's own generation cap applies where lower).
            max_seconds: No prompt is started once the next would likely end after this many seconds
                (the first is always answered).
        """
        self.num_prompts = num_prompts
        self.max_new_tokens = max_new_tokens
        self.max_seconds = max_seconds

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage in ("fit", "validate") and self.num_prompts > 0 and shards_parameters(trainer.strategy):
            rank_zero_info("answer_table: no validation answers under a sharded strategy (FSDP, DeepSpeed ZeRO-3): "
                           "generating needs whole weights on each rank")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        datamodule = trainer.datamodule
        if (self.num_prompts <= 0 or trainer.sanity_checking or datamodule is None or not datamodule.paths.get("val")
                or shards_parameters(trainer.strategy)):
            return
        examples = datamodule.training_examples("val").with_format(None)
        rows = preview_rows(examples["record_type"], self.num_prompts)
        answers, seconds = self._answers(trainer, pl_module, [examples[row] for row in rows])
        if not trainer.is_global_zero:
            return
        records = {record.id: record for record in datamodule.records("val")}
        table = answer_table_markdown([(records[answer["id"]], answer["content"]) for answer in answers])
        note = (f"\n\nGreedy, at most {self.max_new_tokens} new tokens (fewer where the type's own cap is lower): "
                f"{len(answers)} of {len(rows)} prompts answered in {seconds:.1f} s (cap {self.max_seconds:g} s).")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text(TABLE_TAG, table + note, global_step=trainer.global_step)

    def _answers(self, trainer, pl_module, examples: list[dict]) -> tuple[list[dict], float]:
        """Answered as ``sft test`` answers (adapters merged, the run's precision), training going on from
        exactly the weights it had: on the demo's 2-core AVX2 CPU the four answers took 9.5 s merged
        (1.7 s of it merging and restoring) against 10.3-11.0 s unmerged. One prompt at a time, rank 0
        deciding for every rank whether the next one fits the time cap, so the ranks of a data-parallel
        run answer the same prompts."""
        plan, collate = pl_module.generation.greedy_preview(self.max_new_tokens), trainer.datamodule.collator_for_training()
        answers, start = [], time.monotonic()
        with adapters_merged(pl_module.model, restore_exactly=True), trainer.precision_plugin.forward_context():
            for example in examples:
                elapsed = time.monotonic() - start
                if answers and not trainer.strategy.broadcast(elapsed * (len(answers) + 1) / len(answers) <= self.max_seconds):
                    break  # the mean time so far says the next prompt would end past the cap
                answers += pl_module.answer(move_data_to_device(collate([example]), pl_module.device), plan)
        return answers, time.monotonic() - start


def preview_rows(record_types: list[str], count: int) -> list[int]:
    """``count`` row indices, one of each type in turn (in file order), so the table shows every type.

    >>> preview_rows(["math", "math", "choice", "math", "code"], 4)
    [0, 2, 4, 1]
    """
    by_type: dict[str, list[int]] = {}
    for row, record_type in enumerate(record_types):
        by_type.setdefault(record_type, []).append(row)
    rows, rank = [], 0
    while len(rows) < count and any(rank < len(type_rows) for type_rows in by_type.values()):
        rows += [type_rows[rank] for type_rows in by_type.values() if rank < len(type_rows)]
        rank += 1
    return rows[:count]


def answer_table_markdown(answered: list[tuple]) -> str:
    """(record, answer) pairs as a table: id, type, the prompt's last turn, the reference, the answer.

    >>> from types import SimpleNamespace as Record
    >>> record = Record(id="m1", type="math", prompt_messages=[{"role": "user", "content": "2 * 3?"}],
    ...                 messages=[{"role": "user", "content": "2 * 3?"}, {"role": "assistant", "content": "6"}])
    >>> print(answer_table_markdown([(record, "<b>6</b>")]))
    | id | type | prompt | reference | answer |
    |---|---|---|---|---|
    | m1 | math | 2 \\* 3? | 6 | &lt;b&gt;6&lt;/b&gt; |
    """
    rows = [[record.id, record.type, plain(record.prompt_messages[-1]["content"]),
             plain(record.messages[-1]["content"]), plain(_first(answer))] for record, answer in answered]
    return markdown_table(["id", "type", "prompt", "reference", "answer"], rows)


def plain(text: str) -> str:
    r"""Model text shown as it is in a Markdown cell: HTML and Markdown marks escaped, long text cut.

    >>> print(plain("def __init__(self) -> None:"))
    def \_\_init\_\_(self) -&gt; None:
    """
    text = text if len(text) <= CELL_CHARACTERS else text[:CELL_CHARACTERS] + " …"
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for mark in "\\`*_":  # the backslash first, so the ones added after it stay single
        text = text.replace(mark, "\\" + mark)
    return text


def _first(answer) -> str:
    """A type answered with several samples gives a list: the first is shown."""
    return (answer[0] if answer else "") if isinstance(answer, list) else str(answer)
