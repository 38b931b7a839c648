"""Tokenised splits kept on disk, so a second run over the same data starts at once.

Rendering the chat template and masking the labels costs about 1 ms a record on a CPU: a
100,000-record file keeps a run from its first step for a minute and a half, every run, and every
``sft test`` and ``sft predict`` after it. A split is stored once (Arrow, read back memory-mapped)
under a key that hashes everything its tokens depend on:

- the records: a split read from one local file is keyed by the file's bytes (sha256 in C, about
  1 s a gigabyte), its suffix and the spec that reads it (format, renames, system prompt, roles), so
  a warm start parses nothing; a mixture or a hub dataset by each record's id, type, conversation
  (messages or prompt messages), tools and head fields, as read;
- the tokenizer: its vocabulary and merges, special tokens and chat template;
- the options (``train_on``, ``max_length``) and ``CACHE_VERSION``, raised whenever the code that
  turns records into tokens changes what it makes.

So a changed record (any byte of its file), template or option is a new key, never a stale hit; nothing is keyed by file
name or date. A folder appears whole or not at all (written beside, then renamed), so a run killed
while writing leaves no half cache, and two ranks writing the same split at once keep one copy.
"""

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import datasets

from core.record import Record
from datamodules.record_loading import quiet_datasets

CACHE_VERSION = 3  # 2: keep_answer leaves a too-long answer half of max_length; 3: keyed by the file's bytes
ENVIRONMENT_VARIABLE = "SFT_TOKEN_CACHE"


def default_cache_dir() -> Path:
    """``$SFT_TOKEN_CACHE``, else ``~/.cache/lightning-sft/tokens``."""
    return Path(os.environ.get(ENVIRONMENT_VARIABLE) or Path.home() / ".cache" / "lightning-sft" / "tokens")


def tokenizer_digest(tokenizer: Any) -> str:
    """What of the tokenizer decides the ids: its serialised model (vocabulary, merges, normaliser,
    added tokens), its special tokens and its chat template."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update(backend.to_str().encode() if backend is not None else repr(tokenizer.get_vocab()).encode())
    digest.update(json.dumps([str(tokenizer.special_tokens_map), tokenizer.chat_template,
                              tokenizer.eos_token_id, tokenizer.pad_token_id], default=str).encode())
    return digest.hexdigest()


def split_key(kind: str, records_id: str, tokenizer_id: str, options: dict) -> str:
    """The cache key of one split: ``kind`` (training or prompts), its records' digest
    (``file_digest`` or ``records_digest``), the tokenizer's (``tokenizer_digest``) and the options:
    64 hex digits."""
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, kind, options], sort_keys=True).encode())
    digest.update(tokenizer_id.encode())
    digest.update(records_id.encode())
    return digest.hexdigest()


def file_digest(path: str | Path, spec: Any) -> str:
    """What decides the records of a local file, without parsing it: its bytes (hashed in C, a
    megabyte at a time), its suffix (the parser) and ``spec`` (a dataclass: how rows become
    records), plus the ``datasets`` version that parses it: 64 hex digits. One byte changed is a
    new digest; the file's name and date are not in it."""
    with open(path, "rb") as file:
        content = hashlib.file_digest(file, "sha256").hexdigest()
    header = [Path(path).suffix.lower(), asdict(spec), datasets.__version__]
    return hashlib.sha256(json.dumps([content, header], sort_keys=True, default=str).encode()).hexdigest()


def records_digest(records: list[Record], messages_of: Callable[[Record], list]) -> str:
    """The records as read, in order: 64 hex digits. What a checkpoint keeps of its training data
    (datamodules/training_data.py), and the records' part of the cache key where the split is not
    one local file (a mixture, a hub dataset)."""
    digest = hashlib.sha256()
    _add_records(digest, records, messages_of)
    return digest.hexdigest()


def _add_records(digest, records: list[Record], messages_of: Callable[[Record], list]) -> None:
    for record in records:
        fields = [record.id, record.type, messages_of(record), record.tools, record.num_choices, record.choice_label]
        digest.update(json.dumps(fields, sort_keys=True, default=str).encode())


def is_cached(cache_dir: Path | None, key: str) -> bool:
    """Whether ``cached_split`` would read this key back (without reading it)."""
    return cache_dir is not None and (Path(cache_dir) / key[:40] / "complete").is_file()


def cached_value(cache_dir: Path | None, key: str, compute: Callable[[], Any]) -> Any:
    """A small JSON value (a checkpoint's data fingerprint) computed once per key and kept in
    ``cache_dir/values``; computed every time when ``cache_dir`` is None."""
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / "values" / f"{key[:40]}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not stored yet, or damaged: computed (again)
        pass
    value = compute()
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(value))
        partial.rename(path)
    except OSError:  # a read-only cache: the value is still right, only not kept
        partial.unlink(missing_ok=True)
    return value


def cached_split(cache_dir: Path | None, key: str, build: Callable[[], tuple[datasets.Dataset, Any]],
                 stats_type: type | None = None) -> tuple[datasets.Dataset, Any, bool]:
    """``build()``'s (dataset, stats) from ``cache_dir/key`` if stored, else built and stored there.

    Returns (dataset, stats, whether it came from the cache). ``cache_dir`` None: always built.
    """
    if cache_dir is None:
        return (*build(), False)
    folder = Path(cache_dir) / key[:40]
    if (folder / "complete").is_file():
        try:
            return (*_load(folder, stats_type), True)
        except (OSError, ValueError, TypeError):  # a damaged copy (files removed by hand): built again
            shutil.rmtree(folder, ignore_errors=True)
    dataset, stats = build()
    _store(folder, dataset, stats)
    return dataset, stats, False


def _load(folder: Path, stats_type: type | None) -> tuple[datasets.Dataset, Any]:
    stats_json = json.loads((folder / "stats.json").read_text())
    stats = stats_type(**stats_json) if stats_type is not None and stats_json is not None else None
    with quiet_datasets():
        return datasets.load_from_disk(str(folder / "dataset")), stats


def _store(folder: Path, dataset: datasets.Dataset, stats: Any) -> None:
    """Writes beside ``folder`` and renames: a reader sees the whole folder or none."""
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    if folder.exists() and not (folder / "complete").is_file():  # not one of ours: a whole copy replaces it
        shutil.rmtree(folder, ignore_errors=True)
    try:
        with quiet_datasets():  # no progress bar for a few megabytes, at every first run
            dataset.save_to_disk(str(partial / "dataset"))
        (partial / "stats.json").write_text(json.dumps(asdict(stats) if stats is not None else None))
        (partial / "complete").write_text("")
        partial.rename(folder)
    except OSError:  # another process stored it first, or the cache folder cannot be written: run without it
        shutil.rmtree(partial, ignore_errors=True)
