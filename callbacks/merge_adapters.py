"""At the end of ``fit``: a deployable Hugging Face folder, checked against the trained model, and for
a PEFT run its adapter folder (``<log_dir>/adapter``, ``modules/export/adapter_folder.py``).

Serving a PEFT run's adapter needs peft and the exact base; the folder this writes loads with plain
``AutoModelForCausalLM.from_pretrained`` (tokenizer, chat template and any choice head included).
The merge, the logit check and the failure policy live in ``modules/export/hf_folder.py``; this callback
picks the weights (the best checkpoint by default) and calls it on rank 0. Under FSDP or DeepSpeed
ZeRO-3 no rank holds whole weights: every rank takes part in gathering them onto rank 0's CPU, which
rebuilds a plain copy of the model and exports that (``modules/training/sharding.py``).
"""

import shlex
import sys
from pathlib import Path

import torch
from peft import PeftModel
from lightning.pytorch.callbacks import Callback

from modules.export.adapter_folder import save_adapter_folder
from modules.export.hf_folder import export_model
from modules.peft.checkpoint_keys import check_checkpoint_keys
from modules.training.sharding import gathered_full_state, refuse_merge_from_checkpoint_folders, shards_parameters, unsharded_copy


class MergeAdapters(Callback):
    """Exports on rank 0 at the end of fit. With ``use_best`` the module keeps the best checkpoint's
    weights afterwards (what was exported is what the module holds)."""

    def __init__(self, output_dir: str | None = None, use_best: bool = True, max_relative_error: float = 1e-3,
                 enabled: bool = True, adapter_only: bool = False):
        """
        Args:
            output_dir: Folder for the merged model (default: ``<log_dir>/merged``).
            use_best: Export the best checkpoint's weights (if one was saved), else the end-of-fit weights.
            max_relative_error: Largest allowed max|merged - adapter| / max|adapter| of the probe logits;
                above it the folder is renamed ``<output_dir>.failed`` and the run fails. QLoRA with a
                bf16 compute dtype measures bf16 rounding too: allow about 2e-2 there.
            enabled: Set false to skip merging (and the adapter folder).
            adapter_only: Write only the adapter folder, no merged copy: for serving adapters beside one
                base (vLLM, TGI), where the merged folder would be hundreds of MB nobody loads.
        """
        self.output_dir = output_dir
        self.use_best = use_best
        self.max_relative_error = max_relative_error
        self.enabled = enabled
        self.adapter_only = adapter_only
        self.report: dict | None = None
        self.adapter_dir: Path | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Before training: a best checkpoint written as a folder of shards could not be exported, and a
        full fine-tune has no adapter to write alone."""
        if stage == "fit" and self.enabled and self.use_best:
            refuse_merge_from_checkpoint_folders(trainer.strategy)
        if stage == "fit":
            self.refuse_adapter_only_without_peft(getattr(pl_module, "peft_config", None))

    def refuse_adapter_only_without_peft(self, peft_config) -> None:
        """Also called by the CLI before the Trainer writes anything (no empty run folder on this mistake)."""
        if self.enabled and self.adapter_only and peft_config is None:
            raise ValueError("merge.adapter_only: true needs a PEFT method (model.peft_config): a full fine-tune "
                             "has no adapter. Set merge.adapter_only: false to get the merged folder.")

    def on_fit_end(self, trainer, pl_module) -> None:
        if not self.enabled:
            return
        output_dir = Path(self.output_dir or Path(trainer.log_dir) / "merged")  # log_dir: every rank must ask
        sharded = shards_parameters(trainer.strategy)
        full_state = gathered_full_state(trainer) if sharded else None  # a collective: every rank
        if not trainer.is_global_zero:
            return
        checkpoint_path = best_checkpoint_path(trainer) if self.use_best else None
        if sharded:
            model, head = self._unsharded(pl_module, full_state, checkpoint_path)
        else:
            if checkpoint_path is not None:
                load_checkpoint_weights(pl_module, checkpoint_path)
            model, head = pl_module.model, pl_module.head
        weights = f"best checkpoint {checkpoint_path}" if checkpoint_path else "end of fit"
        checkpoints_dir = getattr(trainer.checkpoint_callback, "dirpath", None)  # named if the disk fills
        if isinstance(model, PeftModel):
            self.adapter_dir = save_adapter_folder(model, pl_module.tokenizer, self._adapter_dir(output_dir),
                                                   pl_module.model_name_or_path, trained_on(trainer, weights),
                                                   the_command(), checkpoints_dir)
            print(f"adapter ({model.active_peft_config.peft_type.value}, for PeftModel.from_pretrained): {self.adapter_dir}")
        if self.adapter_only:
            return
        self.report = export_model(model, pl_module.tokenizer, output_dir, head=head, weights=weights,
                                   max_relative_error=self.max_relative_error, checkpoints_dir=checkpoints_dir)

    def _adapter_dir(self, merged_dir: Path) -> Path:
        """``<log_dir>/adapter`` beside ``<log_dir>/merged``; beside a chosen ``output_dir``, its name plus "-adapter"."""
        return merged_dir.with_name("adapter" if self.output_dir is None else merged_dir.name + "-adapter")

    @staticmethod
    def _unsharded(pl_module, full_state: dict, checkpoint_path: str | None):
        """Rank 0: a plain CPU copy holding the gathered weights, the best checkpoint's over them. (The
        sharded module itself keeps the end-of-fit weights.)"""
        if checkpoint_path is not None:
            state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)["state_dict"]
            check_checkpoint_keys(pl_module, state)
            full_state = {**full_state, **state}
        return unsharded_copy(pl_module, full_state)


def the_command() -> str:
    """The ``sft`` command line that ran, for the model card; inside another program, where to find it."""
    if Path(sys.argv[0]).name == "sft":
        return "sft " + shlex.join(sys.argv[1:])
    return "see config.yaml in the run folder"


def trained_on(trainer, weights: str) -> str:
    """The model card's line on the data: the training file(s), records, steps and which weights."""
    datamodule = getattr(trainer, "datamodule", None)
    data = "?"
    if datamodule is not None and hasattr(datamodule, "split_path"):
        data = f"{datamodule.split_path('train')} ({datamodule.train_fingerprint()['records']} records)"
    return f"{data}, {trainer.global_step} optimizer steps; weights: {weights}"


def best_checkpoint_path(trainer) -> str | None:
    """The best checkpoint file, if the run saved one (sharded checkpoints are folders: not handled)."""
    path = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
    return path if path and Path(path).is_file() else None


def load_checkpoint_weights(module, checkpoint_path: str) -> None:
    """Load a checkpoint's weights into ``module``: non-strict (PEFT ones hold only trainable
    weights), with every checkpoint key checked to exist in the module."""
    # weights_only=True: loop state and hparams of this project's checkpoints are plain containers.
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)["state_dict"]
    check_checkpoint_keys(module, state)
    module.load_state_dict(state, strict=False)
