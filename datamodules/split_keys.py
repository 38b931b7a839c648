"""Each split's token-cache key and the training data's fingerprint, found without parsing a file.

A split read from one local file is keyed by the file's bytes (``token_cache.file_digest``): a warm
start hashes the file in C and reads the tokens back, and no record is parsed, checked or
normalised in Python (a minute at a million records). Records are still read where they are used
(answers scored against references, a warning that names records), and only there. A split that is
not one local file (a mixture of sources, a hub dataset) is keyed by its records as read.

The checkpoint's fingerprint of the training data (``training_data.fingerprint``: a digest of the
records as read) is kept beside the tokens under the file's digest, so a warm fit saves and
compares it without reading the records either.
"""

from pathlib import Path

from datamodules.token_cache import cached_value, file_digest, is_cached, records_digest, split_key, tokenizer_digest
from datamodules.training_data import fingerprint


class SplitKeys:
    """The keys of one data module's splits; digests are computed once per module."""

    def __init__(self, datamodule):
        self.datamodule = datamodule
        self._file_digests: dict[str, str] = {}
        self._tokenizer_digest: str | None = None

    def local_file(self, split: str) -> str | None:
        """The split's one local file, or None (a mixture of sources, a hub dataset, no path)."""
        path = self.datamodule.paths[split]
        return path if isinstance(path, str) and Path(path).is_file() else None

    def records_id(self, split: str) -> str:
        """What decides the split's records: the file's bytes and spec, else the records as read."""
        path = self.local_file(split)
        if path is None:
            return records_digest(self.datamodule.records(split), _messages_of(split))
        if split not in self._file_digests:
            self._file_digests[split] = file_digest(path, self.datamodule.spec)
        return self._file_digests[split]

    def key(self, split: str) -> str:
        """The split's token-cache key: prompts for ``predict``, training examples otherwise."""
        if self._tokenizer_digest is None:
            self._tokenizer_digest = tokenizer_digest(self.datamodule.tokenizer)
        if split == "predict":
            return split_key("prompts", self.records_id(split), self._tokenizer_digest, {})
        datamodule = self.datamodule
        options = {"train_on": datamodule.spec.train_on, "max_length": datamodule.max_length,
                   "truncation": datamodule.truncation}
        return split_key("training", self.records_id(split), self._tokenizer_digest, options)

    def cached(self, split: str) -> bool:
        """Whether the split's tokens are in the cache, known without reading a record (False where
        only the records could tell: a mixture, a hub dataset)."""
        cache_dir = self.datamodule.token_cache_dir
        return cache_dir is not None and self.local_file(split) is not None and is_cached(cache_dir, self.key(split))

    def train_fingerprint(self) -> dict:
        """The training records' count and sha256 (``training_data.fingerprint``), kept under the
        training file's digest so that a warm start does not read the records for it."""
        compute = lambda: fingerprint(self.datamodule.records("train"))  # noqa: E731
        if self.local_file("train") is None or self.datamodule.train_sources is not None:
            return compute()
        return cached_value(self.datamodule.token_cache_dir, f"fingerprint-{self.records_id('train')}", compute)


def _messages_of(split: str):
    """The conversation a split's tokens render: the prompt for ``predict``, the whole one otherwise."""
    if split == "predict":
        return lambda record: record.prompt_messages
    return lambda record: record.messages
