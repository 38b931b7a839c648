"""The answers journal: each batch's answers appended as it finishes, so a killed ``sft predict`` or
``sft test`` keeps every answer it made and a rerun into the same folder answers only the rest.

``answers.partial.jsonl`` holds one JSON object a line: first a header with the settings the answers
were made with (checkpoint, model, generation, input file), then one line per answer (``id``,
``type``, ``content``, ``row_index``). Each batch is flushed and fsynced. A kill can tear only the last
line: reading leaves it out and the next append cuts it off. A rerun with other settings is refused,
so answers from two settings never mix in one answers file.

Under data parallelism each rank answers its share of the batches into its own journal,
``answers.partial.rank{r}.jsonl``; what is answered is read from every journal in the folder, so a
rerun may use another number of ranks. Used by the answer-writing callbacks, in this order::

    journal = AnswerJournal(folder / journal_name(rank, world_size))
    answered_in(folder)                       # setup: records the data module leaves out
    journal.start(settings, "--predictions.output_dir")  # before the first batch: header or check
    journal.append(batch_answers)             # each batch's end
    trainer.strategy.barrier()                # every rank's answers on disk
    write_answers(ordered_answers([answers_in(folder)]), folder); remove_journals(folder)  # rank 0
"""

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

JOURNAL_NAME = "answers.partial.jsonl"
ANSWER_KEYS = ("id", "type", "content", "row_index")


def journal_name(rank: int, world_size: int) -> str:
    """``answers.partial.jsonl`` for one process, ``answers.partial.rank{r}.jsonl`` for each data-parallel rank."""
    return JOURNAL_NAME if world_size == 1 else f"answers.partial.rank{rank}.jsonl"


def journals_in(folder: Path) -> list["AnswerJournal"]:
    """Every journal in ``folder``: one process's and each rank's, of this run or an interrupted one."""
    return [AnswerJournal(path) for path in sorted(Path(folder).glob("answers.partial*.jsonl"))]


def answers_in(folder: Path) -> list[dict]:
    """The answers of every journal in ``folder``, each id once (a batch repeated to even out the ranks'
    steps has the same rows, so the same answers)."""
    answers: dict[str, dict] = {}
    for journal in journals_in(folder):
        for row in journal.answers():
            answers.setdefault(row["id"], row)
    return list(answers.values())


def remove_journals(folder: Path) -> None:
    for journal in journals_in(folder):
        journal.remove()


class AnswersFromOtherSettingsError(ValueError):
    """A rerun into a folder whose journal was made with other settings."""


class AnswerJournal:
    def __init__(self, path: Path):
        self.path = Path(path)

    def answers(self) -> list[dict]:
        """The journal's answers, each id once (a torn last line left out)."""
        return list(self._read()[1].values())

    def answered_ids(self) -> set[str]:
        return set(self._read()[1])

    def start(self, settings: dict, folder_option: str) -> None:
        """Before the first new answer: check that every journal in the folder (other ranks' too) holds
        answers made with these settings (else refuse, naming what differs); then write this journal's
        header, or cut off its torn last line."""
        settings = _as_json(settings)
        for journal in journals_in(self.path.parent):
            journal._check(settings, folder_option)
        header, _, whole_bytes = self._read()
        if header is None:
            self._write_header(settings)
        elif whole_bytes < self.path.stat().st_size:
            os.truncate(self.path, whole_bytes)

    def _check(self, settings: dict, folder_option: str) -> None:
        header, answers, _ = self._read()  # no header yet (another rank is writing it): nothing to mix
        if header is not None and header != settings:
            raise AnswersFromOtherSettingsError(
                f"{self.path} holds {len(answers)} answers made with other settings ({_differences(header, settings)}); "
                f"answers from two settings are not mixed: give another {folder_option}, or delete "
                f"{self.path} (or its folder) to start over"
            )

    def append(self, rows: list[dict]) -> None:
        """One line per answer, on disk (flushed and fsynced) before the next batch starts."""
        lines = "".join(json.dumps({key: row[key] for key in ANSWER_KEYS}, ensure_ascii=False) + "\n" for row in rows)
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(lines)
            file.flush()
            os.fsync(file.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def _write_header(self, settings: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", encoding="utf-8") as file:
            file.write(json.dumps({"answers_journal": 1, "settings": settings}, ensure_ascii=False) + "\n")
            file.flush()
            os.fsync(file.fileno())

    def _read(self) -> tuple[dict | None, dict[str, dict], int]:
        """(header settings, answers by id, bytes of the whole lines); bytes after the last newline are
        a line torn by a kill and are left out. Any other unreadable line is refused."""
        data = self.path.read_bytes() if self.path.exists() else b""
        whole_bytes = data.rfind(b"\n") + 1
        lines = data[:whole_bytes].decode("utf-8").splitlines()
        if not lines:
            return None, {}, whole_bytes
        objects = []
        for number, line in enumerate(lines, start=1):
            try:
                objects.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{self.path}, line {number}: not JSON ({error}); delete the file to start over")
        if "answers_journal" not in objects[0]:
            raise ValueError(f"{self.path}, line 1: not an answers journal header; delete the file to start over")
        answers: dict[str, dict] = {}
        for row in objects[1:]:
            answers.setdefault(row["id"], row)
        return objects[0]["settings"], answers, whole_bytes


def answer_settings(trainer, pl_module, split: str) -> dict:
    """What the answers of ``split`` depend on, for the journal's header: the checkpoint (path, size,
    modification time), the model, precision and head, the generation settings per type, the input
    file's content and how it is read. Not the batch size: a rerun may use a smaller one."""
    datamodule = trainer.datamodule  # None when the trainer was given dataloaders: then they are not fingerprinted
    return {
        "checkpoint": _file_identity(trainer.ckpt_path) if trainer.ckpt_path else None,
        "model": pl_module.model_name_or_path,
        "dtype": pl_module.dtype_name,
        "precision": str(trainer.precision),
        "quantization": pl_module.quantization,
        "config_overrides": getattr(pl_module, "config_overrides", None),
        "head": type(pl_module.head).__name__,
        "generation": asdict(pl_module.generation),
        "input": _content_identity(datamodule.split_path(split)) if datamodule is not None else None,
        "reading": _reading(datamodule.spec) if datamodule is not None else None,
    }


def _reading(spec) -> dict:
    """How records become prompts (format, renames, system prompt ...); not the metric: it only scores."""
    return {key: value for key, value in asdict(spec).items() if key != "metric"}


def _file_identity(path) -> dict:
    if not Path(path).is_file():  # a URL: its name is all there is to compare
        return {"path": str(path)}
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "bytes": stat.st_size, "modified_ns": stat.st_mtime_ns}


def _content_identity(path: str) -> dict:
    """A local file by its content (moving it is fine, editing it is not); a hub dataset by its name."""
    if not Path(path).is_file():
        return {"dataset": path}
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return {"sha256": digest.hexdigest()}


def _as_json(value) -> dict:
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def _differences(before: dict, now: dict) -> str:
    """``generation.default.max_new_tokens: was 4, now 5; ...``: the settings that changed, leaf by leaf."""
    before, now = _leaves(before), _leaves(now)
    changed = [key for key in sorted(set(before) | set(now)) if before.get(key) != now.get(key)]
    return "; ".join(f"{key}: was {json.dumps(before.get(key))}, now {json.dumps(now.get(key))}" for key in changed)


def _leaves(settings, prefix: str = "") -> dict:
    if not isinstance(settings, dict) or not settings:
        return {prefix: settings}
    leaves = {}
    for key, value in settings.items():
        leaves.update(_leaves(value, f"{prefix}.{key}" if prefix else key))
    return leaves
