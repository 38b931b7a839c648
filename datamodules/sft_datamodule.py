"""The LightningDataModule: record files → chat-template tokens with answer-only labels."""

import inspect
from collections.abc import Mapping
from dataclasses import asdict

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from core.step_loss import StepTokenCounts
from datamodules.batching import (
    AnsweringBatches,
    EpochBatchSampler,
    LengthGroupedBatchSampler,
    TypeGroupedBatchSampler,
    ValidationBatchSampler,
    prompt_lengths,
)
from datamodules.collate import PromptCollator, training_collator
from datamodules.packing import PackedCollator, TokenBudgetBatchSampler
from core.record import Metric, Record
from datamodules.chat_tokens import TrainOn
from datamodules.formats import Format, SpeakerRole
from datamodules.mixing import Mixture, TrainSource, check_sources, read_mixture
from datamodules.normalize import ConversationSpec, read_records
from datamodules.preprocess import (TokenStats, build_prompt_examples, build_training_examples,
                                    unanswered_test_records)
from datamodules.split_keys import SplitKeys
from datamodules.token_cache import cached_split, default_cache_dir
from datamodules.training_data import STATE_KEY, new_training_data, position_in_data
from datamodules.truncation import Truncation
from core.tokenizer import load_tokenizer


MIN_MAX_LENGTH = 32

# The files each stage reads (validation answers score the validation records).
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}


class SFTDataModule(L.LightningDataModule):
    SPEC_OPTIONS = ("format", "fields", "system_prompt", "train_on", "metric", "roles")

    @classmethod
    def spec_from_options(cls, options: Mapping) -> ConversationSpec:
        """How records are read, from ``data`` options (a config's section, CLI flags): the one way from
        options to a spec, for this module and for ``sft score`` / ``sft report``, so an option added
        here reaches both. Options not given (or None) take this class's own defaults."""
        parameters = inspect.signature(cls.__init__).parameters
        chosen = {name: parameters[name].default for name in cls.SPEC_OPTIONS}
        chosen.update({name: options[name] for name in cls.SPEC_OPTIONS if options.get(name) is not None})
        return ConversationSpec(chosen["format"], dict(chosen["fields"] or {}), chosen["system_prompt"],
                                chosen["train_on"], chosen["metric"], dict(chosen["roles"] or {}))

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
        max_length: int | None = 1024,
        truncation: Truncation = "keep_answer",
        warn_dropped_share: float = 0.01,
        batch_size: int = 4,
        group_by_length: bool = True,
        length_group_steps: int = 1,
        padding_free: bool = False,
        max_tokens_per_batch: int | None = None,
        eval_batch_size: int | None = None,
        answer_batch_size: int = 256,
        num_workers: int = 0,
        num_proc: int | None = None,
        cache_tokens: bool = True,
        resume_on_new_data: bool = False,
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
            max_length: Examples longer than this many tokens are cut (and counted); at least 32, or null.
            truncation: How an example longer than max_length is cut: keep_answer (the oldest turns, then
                the start of the last user message, so the answer and the end of the question stay),
                keep_start (cut the end: the answer goes first, and an example left without a trained
                token is dropped) or keep_end (cut the start).
            warn_dropped_share: A split that drops more than this share of its records (no trained token
                left) says so in a warning; one that keeps none stops the run before the model loads.
            batch_size: Training micro-batch size (sequences).
            group_by_length: Split each window of ``length_group_steps`` optimizer steps' examples into
                micro-batches of similar length (less padding); the windows are those of plain shuffling.
            length_group_steps: The window of group_by_length, in optimizer steps. 1 (the default) keeps
                every optimizer step's examples those of plain shuffling, so the model is the same (tested)
                with about a fifth less padding on the bundled data; wider windows pad less still but put
                similar examples into the same steps (25 steps: 6% worse held-out loss on a 12-step run,
                benchmarks/RESULTS.md).
            padding_free: Put each training (and validation-loss) micro-batch's examples end to end in one
                row, positions restarting at each example, attention kept inside each example by the
                kernel: no padding. Not with prompt-learning PEFT methods (prefix, prompt, p-tuning).
            max_tokens_per_batch: Fill each training micro-batch up to this many tokens (lengths added up
                with padding_free, else rows × the longest row) instead of batch_size rows; an example
                longer than this goes alone. Batches are made once per seed, shuffled every epoch.
            eval_batch_size: Batch size of the validation loss (default: batch_size).
            answer_batch_size: Prompts per answering batch (predict, test and validation answers): records
                generated with the same settings, longest prompt first. model.answer_rows of them decode
                at once and the others join as rows finish, so the decoding batch stays full; answers are
                written (and a stopped run resumes) batch by batch.
            num_workers: DataLoader worker processes.
            num_proc: Processes that tokenize a split (each takes a contiguous share of its records): by
                default every core this run may use for a split of 10,000 records or more, one for a
                smaller one (starting the processes costs more than its tokenizing). Any value gives
                the same tokens in the same order.
            cache_tokens: Keep each split's tokens on disk ($SFT_TOKEN_CACHE, else
                ~/.cache/lightning-sft/tokens), keyed by the file's bytes (a mixture: its records), the
                tokenizer and the options, so the next run over the same data reads no record.
            resume_on_new_data: Resume a fit (--ckpt_path) on training records other than the checkpoint's:
                its weights, optimizer and step go on, and the new data trains from its first record.
                Without it such a resume stops and says so (it would skip the new data's first records).
            tokenizer_name_or_path: Set from model.model_name_or_path; do not set it in YAML.
            trust_remote_code: Set from model.trust_remote_code; do not set it in YAML.
            chat_template: Set from model.chat_template; do not set it in YAML.
        """
        super().__init__()
        if isinstance(train_path, list):  # saved as plain dicts: LightningCLI reads checkpoints with weights_only
            train_path = [asdict(s) if isinstance(s, TrainSource) else dict(s) for s in train_path]
        self.save_hyperparameters()
        self.spec = self.spec_from_options(dict(format=format, fields=fields, system_prompt=system_prompt,
                                                train_on=train_on, metric=metric, roles=roles))
        self.train_sources = None  # a list: a mixture of sources, each with its own format
        if isinstance(train_path, list):
            self.train_sources = [TrainSource(**source) for source in train_path]
            check_sources(self.train_sources)
        self.mixture: Mixture | None = None
        self.paths = {"train": train_path, "val": val_path, "test": test_path, "predict": predict_path}
        if max_length is not None and max_length < MIN_MAX_LENGTH:
            raise ValueError(f"data.max_length must be at least {MIN_MAX_LENGTH} (a chat turn's headers alone take "
                             f"~10 tokens) or null for no cut, got {max_length}")
        self.max_length = max_length
        self.truncation = truncation
        self.warn_dropped_share = warn_dropped_share
        self.batch_size = batch_size
        self.group_by_length = group_by_length
        if length_group_steps < 1:
            raise ValueError(f"data.length_group_steps must be at least 1, got {length_group_steps}")
        self.length_group_steps = length_group_steps
        if max_tokens_per_batch is not None and max_tokens_per_batch < 1:
            raise ValueError(f"data.max_tokens_per_batch must be at least 1 (or null for batch_size rows), "
                             f"got {max_tokens_per_batch}")
        self.padding_free = padding_free
        self.max_tokens_per_batch = max_tokens_per_batch
        self.eval_batch_size = eval_batch_size or batch_size
        self.answer_batch_size = answer_batch_size
        self.num_workers = num_workers
        if num_proc is not None and num_proc < 1:
            raise ValueError(f"data.num_proc must be at least 1 (or null: every core for a large split), got {num_proc}")
        self.num_proc = num_proc
        self.token_cache_dir = default_cache_dir() if cache_tokens else None
        self.resume_on_new_data = resume_on_new_data
        self.train_started_at_step = 0  # the global step the training records started at (a resume on new data)
        self.new_data_at_resume = False  # the restored epoch then counts none of its batches as trained
        self._train_fingerprint: dict | None = None
        self.tokenizer_name_or_path = tokenizer_name_or_path
        self.trust_remote_code = trust_remote_code
        self.chat_template = chat_template
        self._tokenizer = None
        self._records: dict[str, list[Record]] = {}
        self.split_keys = SplitKeys(self)
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

    def check_files(self, splits) -> None:
        """Read and validate the configured files of ``splits`` (one located error for the first bad one)."""
        for split in splits:
            if self.paths[split]:
                self.records(split)

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

    def train_fingerprint(self) -> dict:
        """The training records' count and sha256, which checkpoints keep (datamodules/training_data.py)."""
        if self._train_fingerprint is None:
            self._train_fingerprint = self.split_keys.train_fingerprint()
        return self._train_fingerprint

    def state_dict(self) -> dict:
        if "train" not in self.examples and "train" not in self._records:  # not fitting
            return {}
        return {STATE_KEY: {**self.train_fingerprint(), "started_at_step": self.train_started_at_step,
                            "global_step": self.trainer.global_step if self.trainer is not None else 0}}

    def load_state_dict(self, state: dict) -> None:
        """A resumed fit on the checkpoint's training data goes on where it stopped; on other data it stops
        (the CLI says so before anything is written) unless ``resume_on_new_data``."""
        fitting = self.trainer is not None and self.trainer.state.fn == "fit"
        if not fitting or STATE_KEY not in state:
            return
        saved = state[STATE_KEY]
        self.new_data_at_resume = new_training_data(self.trainer.ckpt_path, saved, self)
        self.train_started_at_step = saved["global_step"] if self.new_data_at_resume else saved["started_at_step"]

    def training_examples(self, split: str):
        """Tokenized, masked examples of a split (built once), with their statistics logged."""
        if split not in self.examples:
            path = self.split_path(split)
            examples, stats, from_cache = cached_split(self.token_cache_dir, self.split_keys.key(split), lambda: (
                build_training_examples(self.records(split), self.tokenizer, self.spec.train_on, self.max_length,
                                        path, self.truncation, self.num_proc)), TokenStats)
            self.examples[split], self.token_stats[split] = examples, stats
            rank_zero_info(stats.summary(split) + (" (tokens from the cache)" if from_cache else ""))
            self._refuse_silent_loss(split, path, stats)
            if split == "test" and stats.dropped_no_trained_tokens:
                rank_zero_warn(unanswered_test_records(path, self.records(split), examples, self.max_length))
            if split == "train" and self.mixture is not None:
                rank_zero_info(self.mixture.summary(split))
            if split == "train" and not from_cache and self.token_cache_dir:  # kept while the records are at hand
                self.train_fingerprint()
        return self.examples[split]

    def _refuse_silent_loss(self, split: str, path: str, stats: TokenStats) -> None:
        """No split trains (or scores a loss) on nothing, and none loses many examples unsaid."""
        why = (f"{stats.truncated} cut at data.max_length {self.max_length} (data.truncation {self.truncation}), "
               f"{stats.dropped_no_trained_tokens} left without a trained token")
        if stats.records and not stats.kept:
            raise ValueError(f"{path}: the {split} split keeps none of its {stats.records} records ({why}): "
                             f"{self._what_keeps_more()}")
        if split != "test" and stats.dropped_no_trained_tokens > self.warn_dropped_share * stats.records:
            # (the test split names its dropped records instead: unanswered_test_records)
            rank_zero_warn(f"{path}: the {split} split drops {stats.dropped_no_trained_tokens} of {stats.records} "
                           f"records ({why}); {self._what_keeps_more()}")

    def _what_keeps_more(self) -> str:
        if self.truncation == "keep_answer":
            return "raise data.max_length (these prompts leave their answers no room)"
        return "raise data.max_length, or use data.truncation keep_answer (it cuts the prompt, not the answer)"

    def prompt_examples(self, split: str = "predict"):
        if split not in self.examples:
            path = self.split_path(split)
            self.examples[split], _, _ = cached_split(self.token_cache_dir, self.split_keys.key(split), lambda: (
                build_prompt_examples(self.records(split), self.tokenizer, path, self.num_proc), None))
        return self.examples[split]

    def setup(self, stage: str) -> None:
        """The files this stage uses are read and validated here, before the model is loaded; the
        configured files it does not use are neither read nor checked (a config's test file in
        another format does not stop a fit on your own data). A file whose tokens are in the cache
        is not read at all: its bytes, hashed, are the key, and it was checked when they were made.
        ``sft demo`` checks the files of all its steps before its fit starts (``check_files``)."""
        self.check_files([split for split in STAGE_SPLITS[stage] if not self.split_keys.cached(split)])
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
        examples, collator = self.training_examples("train"), self.collator_for_loss()
        seed = torch.initial_seed()  # what seed_everything set: the run's seed
        ranks = {"num_replicas": self.trainer.world_size, "rank": self.trainer.global_rank} if self.trainer else {}
        lengths = [len(ids) for ids in examples["input_ids"]]
        accumulate = self.trainer.accumulate_grad_batches if self.trainer is not None else 1
        if self.max_tokens_per_batch is not None:
            batches = TokenBudgetBatchSampler(lengths, self.max_tokens_per_batch, seed, self.padding_free, **ranks)
        elif self.group_by_length:  # a window of whole optimizer steps, every rank's micro-batches included
            step_batches = accumulate * ranks.get("num_replicas", 1)
            batches = LengthGroupedBatchSampler(lengths, self.batch_size, seed, step_batches * self.length_group_steps,
                                                **ranks)
        else:
            batches = EpochBatchSampler(len(examples), self.batch_size, seed, **ranks)
        if self.trainer is not None:  # a resumed fit carries on where its epoch stopped
            batches.resume_at(*position_in_data(self.train_started_at_step, self.trainer.current_epoch,
                                                self.trainer.global_step, len(batches), accumulate))
        loader = DataLoader(examples.with_format(None), batch_sampler=batches, collate_fn=collator,
                            num_workers=self.num_workers)
        return StepTokenCounts(loader, accumulate)

    def val_dataloader(self):
        """Batches in length order (``ValidationBatchSampler``); under data parallelism each rank every
        world-size-th batch, with the repeats that even the rounds flagged (the loss leaves them out)."""
        if not self.paths["val"]:
            return []
        examples = self.training_examples("val")
        ranks = {"num_replicas": self.trainer.world_size, "rank": self.trainer.global_rank} if self.trainer else {}
        batches = ValidationBatchSampler([len(ids) for ids in examples["input_ids"]], self.eval_batch_size, **ranks)
        return AnsweringBatches(DataLoader(examples.with_format(None), batch_sampler=batches,
                                           collate_fn=self.collator_for_loss(), num_workers=self.num_workers))

    def answering_loader(self, examples, collate_fn, answered: set[str] = frozenset(),
                         split_across_ranks: bool = False) -> AnsweringBatches:
        """Batches of one generation setting each (``answer_groups``), for the splits whose answers are
        generated; records in ``answered`` are left out (an interrupted run's whole batches: the rest
        batch as before). With ``split_across_ranks``, each data-parallel rank gets its share."""
        ranks = {}
        if split_across_ranks and self.trainer is not None:
            ranks = {"num_replicas": self.trainer.world_size, "rank": self.trainer.global_rank}
        leave_out = {row for row, record_id in enumerate(examples["id"]) if record_id in answered} if answered else set()
        batches = TypeGroupedBatchSampler(self.answer_groups(examples["record_type"]), self.answer_batch_size,
                                          leave_out=leave_out,
                                          lengths=prompt_lengths(examples), **ranks)
        return AnsweringBatches(DataLoader(examples.with_format(None), batch_sampler=batches, collate_fn=collate_fn,
                                           num_workers=self.num_workers))

    def answer_groups(self, record_types: list[str]) -> list[str]:
        """What may share an answering batch: rows generated with the same settings. The module's
        generation plan says which types share settings (by default every type but code-generate,
        which is sampled); without a module, each type is its own group."""
        plan = getattr(getattr(self.trainer, "lightning_module", None), "generation", None)
        if plan is None or not hasattr(plan, "key_for_type"):
            return list(record_types)
        return [plan.key_for_type(record_type) for record_type in record_types]

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

    def collator_for_loss(self):
        """Training and validation-loss batches: packed with ``padding_free``, else as ``collator_for_training``."""
        if self.padding_free:
            return PackedCollator(pad_token_id=self.tokenizer.pad_token_id)
        return self.collator_for_training()

