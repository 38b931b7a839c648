"""The LightningDataModule: record files → chat-template tokens with answer-only labels."""

from dataclasses import asdict

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from core.step_loss import StepTokenCounts
from datamodules.batching import (
    AnsweringBatches,
    EpochBatchSampler,
    LengthGroupedBatchSampler,
    TypeGroupedBatchSampler,
    resume_position,
)
from datamodules.collate import PromptCollator, training_collator
from core.record import Metric, Record
from datamodules.chat_tokens import TrainOn
from datamodules.formats import Format, SpeakerRole
from datamodules.mixing import Mixture, TrainSource, check_sources, read_mixture
from datamodules.normalize import ConversationSpec, read_records
from datamodules.preprocess import TokenStats, build_prompt_examples, build_training_examples
from core.tokenizer import load_tokenizer


class SFTDataModule(L.LightningDataModule):
    def __init__(
        self,
        train_path: str | list[TrainSource] | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        predict_path: str | None = None,
        format: Format = "typed",
        fields: dict[str, str] | None = None,
        roles: dict[str, SpeakerRole] | None = None,
        system_prompt: str | None = None,
        train_on: TrainOn = "all_assistant",
        metric: Metric | None = None,
        max_length: int = 1024,
        batch_size: int = 4,
        group_by_length: bool = True,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        tokenizer_name_or_path: str | None = None,
        trust_remote_code: bool = False,
        chat_template: str | None = None,
    ):
        """
        Args:
            train_path: Training records: a .jsonl/.json/.parquet/.csv file, or a hub dataset name; or a
                list of {path, format, fields, roles, weight} sources, each read in its own format and
                mixed by weight (seeded by the run's seed; the mixture stops when one source runs out).
            val_path: Validation records (same format), for the validation loss.
            test_path: Labelled test records, for ``sft test``.
            predict_path: Records to answer with ``sft predict`` (answers may be absent).
            format: Record format: typed, messages, sharegpt, prompt_completion, instruction, qa, math, think.
            fields: Renames from the format's field names to your data's keys, e.g. {question: Question}.
            roles: ShareGPT speaker names → roles (system, user, assistant, tool, function_call), over the
                usual ones (human, gpt, observation, function_call ...), e.g. {bot: assistant}.
            system_prompt: A system message put first in every conversation that has none.
            train_on: Train every assistant turn of a conversation, or only the last one.
            metric: How answers are scored (choice, code, math, rouge, squad, think); default: by the
                record's type (typed records per type, qa squad, math math, think think, the rest rouge).
            max_length: Examples longer than this many tokens are cut (and counted).
            batch_size: Training micro-batch size (sequences).
            group_by_length: Batch training examples of similar length together (less padding).
            eval_batch_size: Batch size for validation, test and predict (default: batch_size).
            num_workers: DataLoader worker processes.
            tokenizer_name_or_path: Set from model.model_name_or_path; do not set it in YAML.
            trust_remote_code: Set from model.trust_remote_code; do not set it in YAML.
            chat_template: Set from model.chat_template; do not set it in YAML.
        """
        super().__init__()
        if isinstance(train_path, list):  # saved as plain dicts: LightningCLI reads checkpoints with weights_only
            train_path = [asdict(s) if isinstance(s, TrainSource) else dict(s) for s in train_path]
        self.save_hyperparameters()
        self.spec = ConversationSpec(format, dict(fields or {}), system_prompt, train_on, metric, dict(roles or {}))
        self.train_sources = None  # a list: a mixture of sources, each with its own format
        if isinstance(train_path, list):
            self.train_sources = [TrainSource(**source) for source in train_path]
            check_sources(self.train_sources)
        self.mixture: Mixture | None = None
        self.paths = {"train": train_path, "val": val_path, "test": test_path, "predict": predict_path}
        self.max_length = max_length
        self.batch_size = batch_size
        self.group_by_length = group_by_length
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.tokenizer_name_or_path = tokenizer_name_or_path
        self.trust_remote_code = trust_remote_code
        self.chat_template = chat_template
        self._tokenizer = None
        self._records: dict[str, list[Record]] = {}
        self.examples: dict = {}
        self.token_stats: dict[str, TokenStats] = {}
        self.answered_before: dict[str, set[str]] = {}  # predict/test ids an interrupted run answered

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if not self.tokenizer_name_or_path:
                raise ValueError("the data module needs a tokenizer: set model.model_name_or_path")
            self._tokenizer = load_tokenizer(self.tokenizer_name_or_path, self.trust_remote_code, self.chat_template)
        return self._tokenizer

    def split_path(self, split: str) -> str:
        path = self.paths[split]
        if not path:
            raise ValueError(f"no {split} data: set --data.{split}_path")
        if split == "train" and self.train_sources is not None:  # a mixture of training sources
            return " + ".join(source.path for source in self.train_sources)
        return path

    def records(self, split: str) -> list[Record]:
        """The split's records, read and validated once: what training, answering and scoring share."""
        if split not in self._records:
            if split == "train" and isinstance(self.train_sources, list):
                self.mixture = read_mixture(self.train_sources, self.spec, seed=torch.initial_seed())
                self._records[split] = self.mixture.records
            else:
                self._records[split] = read_records(self.split_path(split), self.spec)
        return self._records[split]

    def training_examples(self, split: str):
        """Tokenized, masked examples of a split (built once), with their statistics logged."""
        if split not in self.examples:
            path = self.split_path(split)
            examples, stats = build_training_examples(
                self.records(split), self.tokenizer, self.spec.train_on, self.max_length, path
            )
            self.examples[split], self.token_stats[split] = examples, stats
            rank_zero_info(stats.summary(split))
            if split == "train" and self.mixture is not None:
                rank_zero_info(self.mixture.summary(split))
        return self.examples[split]

    def prompt_examples(self, split: str = "predict"):
        if split not in self.examples:
            self.examples[split] = build_prompt_examples(self.records(split), self.tokenizer, self.split_path(split))
        return self.examples[split]

    def setup(self, stage: str) -> None:
        """Every configured split is read and validated here, before the model is loaded: a mistake
        in the test file stops a fit at once, not hours later."""
        for split, path in self.paths.items():
            if path:
                self.records(split)
        if stage == "fit":
            self.training_examples("train")
            if self.paths["val"]:
                self.training_examples("val")
        elif stage == "validate":
            self.training_examples("val")
        elif stage == "test":
            self.training_examples("test")
        elif stage == "predict":
            self.prompt_examples("predict")

    def _loader(self, examples, batch_size: int, collate_fn) -> DataLoader:
        """Batches in input order (validation, and tests that need a known order)."""
        return DataLoader(examples.with_format(None), batch_size=batch_size, collate_fn=collate_fn,
                          num_workers=self.num_workers)

    def train_dataloader(self):
        examples, collator = self.training_examples("train"), self.collator_for_training()
        seed = torch.initial_seed()  # what seed_everything set: the run's seed
        ranks = {"num_replicas": self.trainer.world_size, "rank": self.trainer.global_rank} if self.trainer else {}
        if self.group_by_length:
            lengths = [len(ids) for ids in examples["input_ids"]]
            batches = LengthGroupedBatchSampler(lengths, self.batch_size, seed, **ranks)
        else:
            batches = EpochBatchSampler(len(examples), self.batch_size, seed, **ranks)
        accumulate = self.trainer.accumulate_grad_batches if self.trainer is not None else 1
        if self.trainer is not None:  # a resumed fit carries on where its epoch stopped
            batches.resume_at(*resume_position(self.trainer.current_epoch, self.trainer.global_step,
                                               len(batches), accumulate))
        loader = DataLoader(examples.with_format(None), batch_sampler=batches, collate_fn=collator,
                            num_workers=self.num_workers)
        return StepTokenCounts(loader, accumulate)

    def val_dataloader(self):
        if not self.paths["val"]:
            return []
        return self._loader(self.training_examples("val"), self.eval_batch_size, self.collator_for_training())

    def answering_loader(self, examples, collate_fn, answered: set[str] = frozenset(),
                         split_across_ranks: bool = False) -> AnsweringBatches:
        """Batches of one question type each, for the splits whose answers are generated; records in
        ``answered`` are left out (an interrupted run's whole batches: the rest batch as before). With
        ``split_across_ranks``, each data-parallel rank gets its share of the batches."""
        ranks = {}
        if split_across_ranks and self.trainer is not None:
            ranks = {"num_replicas": self.trainer.world_size, "rank": self.trainer.global_rank}
        leave_out = {row for row, record_id in enumerate(examples["id"]) if record_id in answered} if answered else set()
        batches = TypeGroupedBatchSampler(examples["record_type"], self.eval_batch_size, leave_out=leave_out, **ranks)
        return AnsweringBatches(DataLoader(examples.with_format(None), batch_sampler=batches, collate_fn=collate_fn,
                                           num_workers=self.num_workers))

    def answer_dataloader(self, split: str, num_records: int | None = None) -> AnsweringBatches:
        """The first ``num_records`` labelled records of a split, batched for answering (validation answers)."""
        examples = self.training_examples(split)
        if num_records is not None:
            examples = examples.select(range(min(num_records, len(examples))))
        return self.answering_loader(examples, self.collator_for_training())

    def answering_examples(self, split: str):
        """What ``sft predict`` (prompts) or ``sft test`` (labelled examples) answers, in input order."""
        return self.prompt_examples(split) if split == "predict" else self.training_examples(split)

    def skip_answered(self, split: str, record_ids: set[str]) -> None:
        """Leave records already answered (by an interrupted run into the same folder) out of the split's loader."""
        self.answered_before[split] = set(record_ids)

    def test_dataloader(self):
        return self.answering_loader(self.answering_examples("test"), self.collator_for_training(),
                                     self.answered_before.get("test", set()), split_across_ranks=True)

    def predict_dataloader(self):
        collator = PromptCollator(pad_token_id=self.tokenizer.pad_token_id)
        return self.answering_loader(self.answering_examples("predict"), collator,
                                     self.answered_before.get("predict", set()), split_across_ranks=True)

    def collator_for_training(self):
        """Right-padded sequences with answer-only labels, plus the head fields (train/val/test)."""
        return training_collator(pad_token_id=self.tokenizer.pad_token_id)
