"""The LightningModule: a Hugging Face causal LM, an optional PEFT wrapper and a swappable head.

Read top to bottom: 1. build (in ``configure_model``, so ``sft inspect`` never loads weights),
2. train (loss is a mean over the trained tokens of a whole optimizer step), 3. evaluate,
4. predict (generation from prompts rendered by the data module's chat-template code),
5. checkpoints (PEFT runs save only the trainable weights), 6. optimizer and schedule.
"""

import warnings
from contextlib import ExitStack
from typing import Any, Literal

import lightning as L
import peft
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from peft import PeftConfig
from transformers.integrations.neftune import activate_neftune

from core.batch_layout import row_slices
from core.embedded import resolve_model_path
from core.step_loss import (
    check_window,
    evaluation_means_over_ranks,
    starts_window,
    step_losses_over_ranks,
    summed_over_ranks,
    undo_accumulation_scaling,
    undo_rank_averaging,
)
from core.tokenizer import load_tokenizer
from modules.backbone.kernels import apply_liger_kernels, require_liger
from modules.backbone.loading import Dtype, follow_tokenizer, load_causal_lm
from modules.backbone.quantization import (
    Quantization,
    prepare_for_kbit_training,
    check_bitsandbytes_optimizer,
    compute_dtype_for,
    require_quantized_kernels,
)
from modules.generation.merged_adapters import adapters_merged
from modules.generation.plan import GenerationPlan, GenerationSettings, default_per_type
from modules.heads import Head, LMHead
from modules.heads.choice_export import restore_choice_head
from modules.peft.adalora_budget import AdaLoraBudget
from modules.peft.checkpoint_keys import check_checkpoint_keys, trainable_state
from modules.peft.methods import packing_refusal
from modules.peft.wrapping import apply_peft, check_peft_settings, trainable_parameter_counts
from modules.speed.compiled_loss import compile_loss
from modules.speed.compiling import compile_repeated_blocks, compiles_this_run, eager_generation
from modules.speed.frozen_weights import store_frozen_weights_for_fit
from modules.speed.training_attention import use_block_attention_in_budget
from modules.training.grad_norm import total_grad_norm
from modules.training.optimizer import (Schedule, learning_rates, one_dimensional_names, parameter_groups, schedule,
                                       with_fused_step)
from modules.training.resume import follow_current_schedule, mark_cut_epoch_unfinished, rebuild_train_loader_after_restore
from modules.training.sharding import optimizer_states_keyed_by_position, refuse_quantized_sharding, shards_parameters


# Validation and test means are reduced over the ranks here (``_log_evaluation``), then logged as they are.
warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(val|test)/")


def refuse_packing(peft_config, neftune_alpha: float | None = None) -> None:
    """Raise ``ValueError`` (one line: the setting and what to change) for settings packing breaks: the
    PEFT method's own reason (``modules/peft/methods.py``), and NEFTune, which scales its noise by
    1/sqrt(row length): a packed row of ten examples would give each a third of the noise it gets alone."""
    if neftune_alpha is not None:
        raise ValueError(
            "data.padding_free: true cannot be used with model.neftune_alpha: NEFTune's noise shrinks with the "
            "length of the row, and a packed row holds many examples. Set data.padding_free: false, or drop "
            "model.neftune_alpha."
        )
    reason = packing_refusal(peft_config)
    if reason is not None:
        raise ValueError(reason)


class SFTModule(L.LightningModule):
    def __init__(
        self,
        model_name_or_path: str = "smollm2-135m-instruct",
        init_from_config: bool = False,
        peft_config: PeftConfig | None = None,
        head: Head | None = None,
        dtype: Dtype = "float32",
        attn_implementation: str | None = None,
        liger_kernels: bool = False,
        config_overrides: dict[str, Any] | None = None,
        neftune_alpha: float | None = None,
        trust_remote_code: bool = False,
        chat_template: str | None = None,
        gradient_checkpointing: bool = False,
        torch_compile: bool | Literal["auto"] = "auto",
        quantization: Quantization | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_schedule: Schedule = "cosine",
        warmup: float = 0.0,
        head_lr: float | None = None,
        generation: GenerationSettings | None = None,
        generation_per_type: dict[str, GenerationSettings] | None = None,
        answer_rows: int = 64,
    ):
        """
        Args:
            model_name_or_path: An embedded alias (smollm2-135m-instruct), a hub name or a local folder.
            init_from_config: Random weights in the architecture of the folder's config.json instead of
                its trained weights (none are read): for speed and memory benchmarks only. The
                tokenizer still comes from the folder.
            peft_config: Any peft config (class_path: peft.LoraConfig ...); none = full fine-tuning.
            head: The output head; default the causal-LM head.
            dtype: Weights' dtype when loading.
            attn_implementation: eager, sdpa, flash_attention_2 ... (default: transformers' choice).
            liger_kernels: Liger's fused Triton kernels for RMSNorm, RoPE and SwiGLU (CUDA GPUs; Llama,
                Qwen, Mistral, Gemma, Phi-3 families; pip install -e '.[liger]'): less activation memory
                and memory traffic. The weights and checkpoints are unchanged.
            config_overrides: Settings of the model's config.json replaced at load time, e.g.
                {rope_parameters: {rope_type: linear, factor: 2.0}, max_position_embeddings: 4096}; an unknown
                key is an error. Give the same to predict and test (they are not saved in the checkpoint).
            neftune_alpha: NEFTune: uniform noise of magnitude alpha/sqrt(seq_len * hidden_size) added to
                the input embeddings in training only (transformers' hook; the paper uses 5); none = off.
            trust_remote_code: Run the Python code a model folder or hub repo ships (custom
                architectures or tokenizers); off unless you trust its source. The tokenizer follows.
            chat_template: For a base model whose tokenizer has no chat template (or to replace it):
                chatml (adds <|im_start|>/<|im_end|> where missing, makes <|im_end|> the EOS token, grows
                the embeddings and trains the new rows, under LoRA too) or the path of a Jinja template
                file. The data module follows; give the same to predict and test.
            gradient_checkpointing: Recompute activations in backward to save memory.
            torch_compile: Compile the decoder layers with torch.compile (one graph shared by all layers,
                dynamic lengths; generation stays eager). The first step carries the compile time,
                reported apart as time/first_step_seconds. auto (the default): when fitting a model of
                50M parameters or more with a compiler at hand (C++ on a CPU, Triton on CUDA), not
                quantized, checkpointed, packed or sharded, and on a CPU without dropout layers (LoRA's
                lora_dropout: compiled, it stepped no faster). SmolLM2 LoRA on 2 CPU cores: ~1.15x the
                steps/s and ~25% less peak memory after ~30 s of compiling (benchmarks/RESULTS.md).
            quantization: Load the frozen base in 4 bits (QLoRA: NF4, double quantization, bfloat16
                compute) or 8 bits with bitsandbytes, to fit bigger models in GPU memory; needs a
                peft_config (quantized weights cannot be trained) and a CUDA GPU.
            optimizer: Optimizer class_path/init_args; biases and norms get no weight decay.
            lr_schedule: Learning-rate decay after warmup, stepped every optimizer step.
            warmup: Warmup length: a fraction of all optimizer steps if below 1, else a step count.
            head_lr: Learning rate of the head's own parameters (a choice classifier starts from
                random weights: it usually wants a larger one than the adapters); default: the optimizer's.
            generation: Default generation settings for predict and test (greedy by default).
            generation_per_type: Settings per question type, e.g. {code-generate: {num_samples: 3,
                do_sample: true}}; default: 3 sampled answers for code-generate, the default for the rest.
            answer_rows: Most rows decoded at once when answering (prompts × samples): the KV cache holds
                this many rows. The rest of an answering batch (data.answer_batch_size prompts) waits and
                joins as rows finish. On a 2-core CPU a decoding step of 64 rows costs ~5 times one of a
                single row (benchmarks/predict/); lower it if the cache runs out of memory on a big model.
        """
        super().__init__()
        if quantization is not None and peft_config is None:
            raise ValueError(
                f"model.quantization: {quantization} needs a model.peft_config: quantized base weights cannot be "
                "trained, only an adapter on top of them (e.g. peft.LoraConfig, which makes it QLoRA)"
            )
        check_peft_settings(peft_config)
        # Only the base model's name is saved: with --ckpt_path, LightningCLI puts saved hyperparameters
        # over the config and the command line, and every other setting (generation, schedule, dtype,
        # init_from_config) must stay the user's to change between fit and predict.
        self.save_hyperparameters("model_name_or_path")
        self.model_name_or_path = model_name_or_path
        self.init_from_config = init_from_config
        self.peft_config = peft_config
        self.head = head if head is not None else LMHead()
        self.dtype_name = dtype
        self.attn_implementation = attn_implementation
        self.liger_kernels = liger_kernels
        if neftune_alpha is not None and not neftune_alpha > 0:
            raise ValueError(f"model.neftune_alpha must be > 0 (the paper uses 5), got {neftune_alpha}")
        self.config_overrides = config_overrides
        self.neftune_alpha = neftune_alpha
        self.trust_remote_code = trust_remote_code
        self.chat_template = chat_template
        self.gradient_checkpointing = gradient_checkpointing
        self.torch_compile = torch_compile
        self.quantization = quantization
        self.optimizer_factory = optimizer
        self.lr_schedule = lr_schedule
        self.warmup = warmup
        self.head_lr = head_lr
        per_type = default_per_type() if generation_per_type is None else generation_per_type
        if answer_rows < 1:
            raise ValueError(f"model.answer_rows must be at least 1, got {answer_rows}")
        self.generation = GenerationPlan(generation or GenerationSettings(), per_type, max_rows=answer_rows)
        self.model = None
        self.one_dimensional: set[str] | None = None  # set by configure_model (modules/training/optimizer.py)
        self._tokenizer = None
        self.tokens_seen = 0
        self.trained_tokens_seen = 0
        self._step_losses: dict[str, torch.Tensor] = {}  # summed over the micro-batches of the current step
        self._step_totals: dict[str, torch.Tensor] = {}  # the current step's totals, over every rank
        self._evaluation_sums: dict[str, torch.Tensor] = {}  # per metric (sum of value × count, count), this rank
        # PEFT checkpoints hold only the trainable weights; the frozen base comes from the model.
        self.strict_loading = peft_config is None

    # 1. Build -----------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Runs before the data module reads the tokenizer: kernels that cannot run stop the run before any download."""
        require_quantized_kernels(self.quantization)
        require_liger(self.liger_kernels)

    def setup(self, stage: str) -> None:
        """Before the model loads: a PEFT method that cannot take the data module's packed batches stops the run."""
        if stage in ("fit", "validate") and getattr(getattr(self.trainer, "datamodule", None), "padding_free", False):
            refuse_packing(self.peft_config, self.neftune_alpha)

    def configure_model(self) -> None:
        if self.model is not None:
            return
        if self._trainer is not None:  # before any weight is read
            refuse_quantized_sharding(self.trainer.strategy, self.quantization)
        self.model = self.build_backbone()
        if self.neftune_alpha is not None:  # the hook adds noise only while the embeddings are in train mode
            activate_neftune(self.model, self.neftune_alpha)
        if cast := store_frozen_weights_for_fit(self.model, self._trainer):  # bf16-mixed LoRA fits
            rank_zero_info(f"frozen weights of {cast} linear layers stored in bf16 (what bf16-mixed computes with)")
        if compiles_this_run(self.torch_compile, self.model, self._trainer, quantized=self.quantization is not None,
                             gradient_checkpointing=self.gradient_checkpointing):
            rank_zero_info(f"compiled {compile_repeated_blocks(self.model)} decoder layers (torch.compile)")
            compile_loss(self.model)
            self._block_attention_in_budget()
        self.model.train()  # from_pretrained returns eval mode, which would switch dropout off in training
        self.head.setup(self.model, self.tokenizer)
        restore_choice_head(self.head, resolve_model_path(self.model_name_or_path))
        # Counted over the whole module: the backbone (with any adapter) and the head's own weights.
        self.one_dimensional = one_dimensional_names(self)  # no weight decay; named while whole (FSDP flattens)
        self.trainable_parameters, self.total_parameters = trainable_parameter_counts(self)
        self.trainable_share = self.trainable_parameters / self.total_parameters
        rank_zero_info(f"trainable parameters: {self.trainable_parameters:,} of {self.total_parameters:,} "
                       f"({100 * self.trainable_share:.3f}%)")

    def _block_attention_in_budget(self) -> None:
        """Compiled layers on a CPU: batches within a memory budget skip the slow CPU flash-attention
        kernel (modules/speed/training_attention.py)."""
        device_type = self._trainer.strategy.root_device.type if self._trainer is not None else "cpu"
        if use_block_attention_in_budget(self.model, device_type, self.attn_implementation):
            rank_zero_info("attention: causal blocks of matmuls while their kept weights fit 512 MiB, SDPA beyond "
                           "(compiled, CPU)")

    def build_backbone(self):
        """The causal LM with its PEFT wrapper, as configured (also what a sharded run's merged export
        is rebuilt from on rank 0: modules/training/sharding.py)."""
        model = load_causal_lm(self.model_name_or_path, self.dtype_name, self.attn_implementation,
                               quantization=self.quantization, compute_dtype=compute_dtype_for(self._precision()),
                               init_from_config=self.init_from_config,
                               config_overrides=self.config_overrides, trust_remote_code=self.trust_remote_code)
        if self.liger_kernels:  # before PEFT: Liger patches the transformers modules it knows
            apply_liger_kernels(model)
        new_token_ids = []  # tokens added for model.chat_template: their rows are trained, under PEFT too
        if self.chat_template is not None:  # before PEFT: the adapter wraps the grown embeddings
            follow_tokenizer(model, self.tokenizer)
            new_token_ids = self.tokenizer.added_template_token_ids
        self._prepare_for_training(model)
        return apply_peft(model, self.peft_config, new_token_ids)

    def _precision(self) -> str | None:
        """The Trainer's precision ("32-true", "bf16-mixed" ...), None outside a Trainer."""
        return str(self._trainer.precision) if self._trainer is not None else None

    def _prepare_for_training(self, model) -> None:
        """A quantized base gets peft's k-bit preparation (it also handles gradient checkpointing)."""
        if self.quantization is not None:
            prepare_for_kbit_training(model, self.gradient_checkpointing)
        elif self.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()

    def configure_callbacks(self) -> list:
        """What a PEFT method needs from the training loop comes with it, whoever builds the Trainer
        (called before ``configure_model``: decided from the config, not the model)."""
        return [AdaLoraBudget()] if isinstance(self.peft_config, peft.AdaLoraConfig) else []

    def on_train_start(self) -> None:
        """The checkpoint is restored by now: a resumed fit continues its epoch's batch order where it
        stopped, and on the schedule of its (maybe larger) budget."""
        rebuild_train_loader_after_restore(self.trainer)
        follow_current_schedule(self.trainer)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.model_name_or_path, self.trust_remote_code, self.chat_template)
        return self._tokenizer

    # 2. Train -----------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        accumulate = self.trainer.accumulate_grad_batches
        check_window(batch, accumulate)
        if starts_window(batch):  # every rank, once a step: the step's totals over all ranks (core/step_loss.py)
            self._step_totals = summed_over_ranks(batch, self._sum_over_ranks)
            self.tokens_seen += int(self._step_totals["step_tokens"])
            self.trained_tokens_seen += int(self._step_totals["step_trained_tokens"])
        batch.update(self._step_totals)  # the heads divide by the whole step's totals
        losses = self.head.training_loss(self.model, batch)
        # Each part is this micro-batch's share of the step's mean (its divisor is the whole step's),
        # so the shares of a step's micro-batches add up to the step's loss: logged once it is whole.
        for name, value in losses.items():
            self._step_losses[name] = self._step_losses.get(name, 0.0) + value.detach()
        return undo_rank_averaging(undo_accumulation_scaling(losses["loss"], accumulate), self.trainer.world_size)

    def _sum_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.trainer.strategy.reduce(tensor, reduce_op="sum")  # one process: the tensor itself

    def on_before_optimizer_step(self, optimizer) -> None:
        """All micro-batches of the step are in (on every rank), not yet clipped: log one point per
        optimizer step of its losses, token accuracy and entropy (``train/loss``, ...: whatever each
        is a mean over), ``train/loss_epoch`` (the mean step loss), the gradient norm before clipping,
        the learning rate the step takes (the head's too where ``head_lr`` gives it its own) and the
        tokens seen. A non-finite step is left out: the numerics callback stops the run on it, or skips
        the step (then the epoch mean stays the mean of the steps that were taken)."""
        step_losses = step_losses_over_ranks(self._step_losses, self._sum_over_ranks)
        self._step_losses = {}
        has_head_group = self.head_lr is not None and any(p.requires_grad for p in self.head.parameters())
        figures = {"tokens_seen": self.tokens_seen, "trained_tokens_seen": self.trained_tokens_seen,
                   **learning_rates(optimizer.param_groups, has_head_group)}
        for name, value in figures.items():
            self.log(f"train/{name}", float(value), on_step=True, on_epoch=False, batch_size=1)
        if not all(torch.isfinite(value).all() for value in step_losses.values()):
            return
        for name, value in step_losses.items():
            self.log(f"train/{name}", value, batch_size=1, on_step=True, on_epoch=False, prog_bar=(name == "loss"))
        self.log("train/loss_epoch", step_losses["loss"], batch_size=1, on_step=False, on_epoch=True)
        sharded = shards_parameters(self.trainer.strategy)
        grad_norm = total_grad_norm(self.parameters(), self._sum_over_ranks if sharded else None)
        if grad_norm is not None:
            self.log("train/grad_norm", grad_norm, batch_size=1, on_step=True, on_epoch=False)

    # 3. Evaluate --------------------------------------------------------------------------------
    def _evaluation_step(self, batch: dict, stage: str) -> None:
        """Token-mean losses and accuracies, each weighted by what it is a mean over: summed here,
        divided once at the epoch's end over every rank's sums, so a run on N ranks logs the
        one-process value."""
        values = self.head.evaluation(self.model, batch)  # also on a repeated batch: sharded weights need every rank
        if batch.get("repeated_batch"):  # it only evens the ranks' last round (datamodules/batching.py)
            return
        dtype = torch.float32 if self.device.type == "mps" else torch.float64
        for name, value in values.items():
            if value.count:
                weighted = torch.stack([torch.as_tensor(value.value).detach().to(self.device, dtype) * value.count,
                                        torch.tensor(float(value.count), dtype=dtype, device=self.device)])
                self._evaluation_sums[name] = self._evaluation_sums.get(name, 0) + weighted

    def _log_evaluation(self, stage: str) -> None:
        """Every rank, at the epoch's end: the means over every rank's batches (one collective)."""
        sums, self._evaluation_sums = self._evaluation_sums, {}
        zeros = torch.zeros(2, dtype=torch.float32 if self.device.type == "mps" else torch.float64, device=self.device)
        means = evaluation_means_over_ranks(sums, self._names_over_ranks(sums), self._sum_over_ranks, zeros)
        for name, value in means.items():
            self.log(f"{stage}/{name}", value.float(), batch_size=1, prog_bar=(name == "loss"))

    def _names_over_ranks(self, names) -> list[str]:
        if self.trainer.world_size == 1 or not torch.distributed.is_initialized():
            return sorted(names)
        every_rank = [None] * self.trainer.world_size
        torch.distributed.all_gather_object(every_rank, sorted(names))
        return sorted(set().union(*every_rank))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    def test_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """Test loss, and answers for the answer-metrics callback to score against the references.
        The loss runs over slices of the answering batch (data.eval_batch_size rows each)."""
        rows_per_slice = getattr(getattr(self.trainer, "datamodule", None), "eval_batch_size", None) or 16
        for rows in row_slices(batch, rows_per_slice):
            self._evaluation_step(rows, "test")
        return self.predict_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")
        self._answering_merge.close()

    # 4. Predict ---------------------------------------------------------------------------------
    def on_test_epoch_start(self) -> None:
        self._merge_for_answering()

    def on_predict_epoch_start(self) -> None:
        self._merge_for_answering()

    def on_predict_epoch_end(self) -> None:
        self._answering_merge.close()

    def _merge_for_answering(self) -> None:
        """LoRA-family adapters merged into the weights until the epoch ends (one matmul per layer and
        step instead of three); unmerged without a copy, as nothing trains after (modules/generation/merged_adapters.py)."""
        self._answering_merge = ExitStack()
        self._answering_merge.enter_context(adapters_merged(self.model, restore_exactly=False))

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        return self.answer(batch, self.generation)

    def answer(self, batch: dict, plan: GenerationPlan) -> list[dict]:
        """One answer row per prompt of ``batch``, generated by ``plan`` (predict and test: the run's
        own; the validation answer table: a short greedy one)."""
        with eager_generation():  # compiled layers (model.torch_compile) run eagerly with a KV cache
            answers = self.head.predict(self.model, self.tokenizer, batch, plan)
        return [
            {"id": record_id, "type": record_type, "content": answer, "row_index": int(row)}
            for record_id, record_type, answer, row in zip(batch["ids"], batch["types"], answers, batch["row_index"])
        ]

    # 5. Checkpoints -----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        mark_cut_epoch_unfinished(self.trainer, checkpoint)  # a budget-stopped epoch resumes where it stopped
        if self.peft_config is not None:
            checkpoint["state_dict"] = trainable_state(self, checkpoint["state_dict"])
        if "optimizer_states" in checkpoint:  # keyed as FSDP keys them, so any layout resumes any other
            checkpoint["optimizer_states"] = optimizer_states_keyed_by_position(
                self, self.trainer.optimizers, checkpoint["optimizer_states"])
        checkpoint["tokens_seen"] = [self.tokens_seen, self.trained_tokens_seen]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "state_dict" in checkpoint:  # DeepSpeed loads the weights itself and hands over the rest only
            check_checkpoint_keys(self, checkpoint["state_dict"])
        self.tokens_seen, self.trained_tokens_seen = checkpoint.get("tokens_seen", [0, 0])

    # 6. Optimizer and schedule -------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(parameter_groups(self.named_parameters(), self.head_lr, self.one_dimensional))
        check_bitsandbytes_optimizer(optimizer)
        optimizer = with_fused_step(optimizer)  # Adam(W) without a chosen implementation: the fused kernel
        total_steps = int(self.trainer.estimated_stepping_batches)
        scheduler = schedule(optimizer, self.lr_schedule, self.warmup, total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
