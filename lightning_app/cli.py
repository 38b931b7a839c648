"""The LightningCLI of lightning-sft: ``sft fit | validate | test | predict`` from YAML."""

import sys
from contextlib import contextmanager
from pathlib import Path

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from callbacks.answer_metrics import AnswerMetrics
from callbacks.answer_table import AnswerTable
from callbacks.checkpoint import SFTCheckpoint
from callbacks.run_card import RunCard
from callbacks.exact_resume import ExactResume
from callbacks.memory import MemoryMonitor
from callbacks.merge_adapters import MergeAdapters
from callbacks.numerics import Numerics
from callbacks.prediction_writer import PredictionWriter
from callbacks.progress import ProgressReport
from callbacks.resume_checks import ResumeChecks
from callbacks.run_summary import RunSummary
from callbacks.throughput import SFTThroughputMonitor
from callbacks.validation_answers import ValidationAnswers
from core.checkpoint_file import read_checkpoint
from core.embedded import resolve_model_path
from datamodules.sft_datamodule import SFTDataModule
from datamodules.training_data import new_training_data, saved_fingerprint
from lightning_app import quiet
from lightning_app.run_dirs import newest_last_checkpoint, next_run_version, version_of_checkpoint
from modules.backbone.weight_files import check_weight_files
from modules.sft_module import SFTModule
from modules.training.checkpoint_settings import refuse_other_settings
from modules.training.precision import choose_precision, precision_warning, probe, probe_kind
from modules.training.resume import nothing_left_to_train

TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        # No placeholder hp_metric of -1: the run summary logs real results as the HParams metrics.
        "init_args": {"save_dir": "runs", "name": "sft", "default_hp_metric": False},
    },
}

# Callbacks every run has; each is configured under its key (e.g. --merge.enabled false).
ALWAYS_ON_CALLBACKS = {
    "checkpoint": SFTCheckpoint,  # ModelCheckpoint + last.ckpt on SIGTERM and mid-epoch whatever the monitor
    "numerics": Numerics,
    "exact_resume": ExactResume,  # random state in checkpoints: a resumed fit draws the same dropout masks
    "resume_checks": ResumeChecks,  # model settings in checkpoints; new training data starts at its first record
    "predictions": PredictionWriter,
    "run_card": RunCard,  # one text card of the run's fixed facts (model, method, data), not one-point charts
    "answer_metrics": AnswerMetrics,
    "val_answers": ValidationAnswers,  # scored answers at each validation (off: num_records 0)
    "answer_table": AnswerTable,  # a few greedy validation answers as a table in the Text tab (on, capped in time)
    "merge": MergeAdapters,
    "memory": MemoryMonitor,
    "throughput": SFTThroughputMonitor,
    "run_summary": RunSummary,
    "progress": ProgressReport,  # tokens/s and ETA in the bar; plain lines when stdout is not a terminal
}


class SFTCLI(LightningCLI):
    def __init__(self, *args, run_label: str | None = None, **kwargs):
        """``run_label``: what the run folder is named for (default: the subcommand); ``sft demo`` tells
        its two test runs apart with it (``test-tuned``, ``test-base``)."""
        quiet.install()
        self.run_label = run_label
        kwargs.setdefault("trainer_defaults", TRAINER_DEFAULTS)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(SFTModule, SFTDataModule, *args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        # The tokenizer follows the model, never the other way (see STYLE.md: links and ckpt_path).
        parser.link_arguments("model.model_name_or_path", "data.tokenizer_name_or_path")
        parser.link_arguments("model.trust_remote_code", "data.trust_remote_code")
        parser.link_arguments("model.chat_template", "data.chat_template")
        for key, callback_class in ALWAYS_ON_CALLBACKS.items():
            parser.add_lightning_class_args(callback_class, key)
        parser.set_defaults({"checkpoint.save_last": True})

    def parse_arguments(self, parser, args) -> None:
        with _only(args):
            super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            self._resolve_last_checkpoint(self.config[subcommand], resume=(subcommand == "fit"))
            self._name_the_run(self.config[subcommand], self.run_label or subcommand)

    def _parse_ckpt_path(self) -> None:
        """A named checkpoint is read (or refused in one line: missing, truncated, not a checkpoint,
        holding foreign objects) before LightningCLI takes its hyperparameters from it."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path:
            read_checkpoint(ckpt_path)
        super()._parse_ckpt_path()

    @staticmethod
    def _resolve_last_checkpoint(config, resume: bool) -> None:
        """``--ckpt_path last`` → the newest last.ckpt of this run name; a resumed fit reuses its dir."""
        if config.get("ckpt_path") != "last":
            return
        logger_args = config.trainer.logger.init_args
        checkpoint = newest_last_checkpoint(logger_args.save_dir, logger_args.name)
        config.ckpt_path = str(checkpoint)
        if resume:
            logger_args.version = version_of_checkpoint(checkpoint)

    @staticmethod
    def _name_the_run(config, label: str) -> None:
        """The run folder says what ran (``runs/<name>/fit``, ``test``, ...: lightning_app/run_dirs.py), and
        the logger writes without a placeholder hp_metric, for every TensorBoard or CSV logger; a version
        already set (in the config, on the command line, or by a resumed fit) is kept."""
        for logger_args in _versioned_logger_args(config.trainer.logger):
            if logger_args.get("version") is None:
                logger_args.version = next_run_version(logger_args.save_dir, logger_args.name or "", label)
            if "default_hp_metric" in logger_args:
                logger_args.default_hp_metric = False

    def _instantiate_trainer(self, config, callbacks):
        """``trainer.enable_checkpointing: false`` leaves the always-on checkpoint callback out (Lightning
        otherwise refuses the pair with a traceback): such a fit writes no checkpoint to resume from."""
        if config.get("enable_checkpointing") is False:
            callbacks = [callback for callback in callbacks if not isinstance(callback, SFTCheckpoint)]
        return super()._instantiate_trainer(config, callbacks)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        self._refuse_a_checkpoint_that_differs()

    def _refuse_a_checkpoint_that_differs(self) -> None:
        """A checkpoint trained with other model settings (any subcommand), or on other training data (a
        resumed fit), stops the run here in one line: before a model loads or anything is written."""
        ckpt_path = self.config_init[self.subcommand].get("ckpt_path") if self.subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        checkpoint = read_checkpoint(ckpt_path)
        refuse_other_settings(ckpt_path, checkpoint, self.model)
        if self.subcommand == "fit":
            new_training_data(ckpt_path, saved_fingerprint(checkpoint, self.datamodule), self.datamodule)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config  # None: run=False
        self._set_precision_for_the_machine(config.trainer)
        if self.subcommand == "fit":
            self._monitor_only_what_is_validated(config)

    @staticmethod
    def _monitor_only_what_is_validated(config) -> None:
        """Without a validation file nothing logs ``val/*``: the checkpoints then keep the newest,
        rather than warn at every save that the monitored metric is missing."""
        monitor = config.checkpoint.monitor
        if not config.data.val_path and monitor and monitor.startswith("val/"):
            config.checkpoint.monitor = None
            rank_zero_only(print)(f"no validation file (data.val_path): checkpoints keep the newest, not the best by {monitor}")

    @staticmethod
    def _set_precision_for_the_machine(trainer_config) -> None:
        """An unset ``trainer.precision`` becomes the machine's (so config.yaml records what ran);
        a set one is kept, with a warning where it is bf16 on a CPU without bf16 (~300x slower)."""
        kind = probe_kind(trainer_config.accelerator)
        capabilities = probe(kind)
        if trainer_config.precision is None:
            choice = choose_precision(kind, capabilities)
            trainer_config.precision = choice.precision
            rank_zero_only(print)(choice.line())  # once, not once a process under DDP
        elif warning := precision_warning(trainer_config.precision, kind, capabilities):
            rank_zero_warn(warning)

    def _read_the_stage_files(self) -> None:
        """The subcommand's data files are read, checked and tokenized, and the model folder's weight
        files checked, before the trainer starts: a bad file then stops the run before Lightning's
        logger creates the run folder (the datamodule keeps what it built, so the trainer's own
        ``setup`` call finds it done)."""
        self.datamodule.setup(self.subcommand)
        if not self.model.init_from_config:
            check_weight_files(resolve_model_path(self.model.model_name_or_path))

    def before_validate(self) -> None:
        self._read_the_stage_files()

    def before_test(self) -> None:
        self._read_the_stage_files()

    def before_predict(self) -> None:
        self._read_the_stage_files()

    def before_fit(self) -> None:
        """A resume with no budget left, or merge.adapter_only on a full fine-tune, stops here, before
        config.yaml, logs or an export are written."""
        self._read_the_stage_files()
        for callback in self.trainer.callbacks:
            if isinstance(callback, MergeAdapters):
                callback.refuse_adapter_only_without_peft(self.model.peft_config)
        ckpt_path = self.config_init[self.subcommand].get("ckpt_path")
        if ckpt_path and Path(ckpt_path).is_file():
            reason = nothing_left_to_train(ckpt_path, self.trainer)
            if reason:
                raise SystemExit(f"sft fit: {reason}")

    def after_fit(self) -> None:
        # trainer.log_dir is a broadcast under DDP: every rank asks (once), only rank 0 prints.
        log_dir = self.trainer.log_dir
        say = rank_zero_only(print)
        checkpoints = self.trainer.checkpoint_callback
        say(f"checkpoints: {checkpoints.dirpath}" if checkpoints else "checkpoints: none (trainer.enable_checkpointing false)")
        say(f"TensorBoard logs: {log_dir}  (view: tensorboard --logdir {Path(log_dir).parent})")


def _versioned_logger_args(logger_config) -> list:
    """The init_args of the configured loggers that name a run folder by ``version`` (TensorBoard, CSV)."""
    configs = logger_config if isinstance(logger_config, list) else [logger_config]
    init_args = [getattr(config, "init_args", None) for config in configs]
    return [args for args in init_args if args is not None and "version" in args and args.get("save_dir")]


@contextmanager
def _only(args):
    """Explicit ``args`` (``sft demo``'s steps, tests) are the whole command: the process's own
    arguments are hidden from LightningCLI, which would otherwise warn that both were given."""
    if args is None:
        yield
        return
    process_args, sys.argv[1:] = sys.argv[1:], []
    try:
        yield
    finally:
        sys.argv[1:] = process_args
