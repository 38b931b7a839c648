"""Sharded strategies (FSDP, DeepSpeed ZeRO-3): what checkpoints and the merged export need from them.

Under DDP every rank holds the whole model; under FSDP and ZeRO-3 each rank holds a shard of every
weight, so four things change:

1. **Names.** FSDP (and activation checkpointing) put wrapper modules into the tree:
   ``model.base_model.model.model.layers.0._fsdp_wrapped_module.self_attn...``. The full state dict
   FSDP gathers uses the plain names, so a PEFT checkpoint keeps its trainable weights only when the
   trainable names are compared cleaned (``clean_name``).
2. **Whole weights for the export.** The merge needs every weight whole, on one process. Every rank
   takes part in gathering them (``gathered_full_state``, a collective); rank 0 gets them on the CPU,
   builds a plain copy of the model from ``model_name_or_path`` and the PEFT config, loads them and
   exports that (``callbacks/merge_adapters.py``). Only rank 0 writes.
3. **Combinations that cannot work** stop before the model loads (``refuse_*``): a
   quantized base under FSDP or ZeRO-3 (bitsandbytes' packed 4/8-bit weights cannot be flattened
   into shards), and the export of the best checkpoint where checkpoints are folders of shards
   (DeepSpeed, FSDP's ``state_dict_type: sharded``): use FSDP's ``full``, which gives rank 0 the whole
   state dict and, for PEFT runs, writes only the adapter weights anyway, or ``merge.use_best: false``.
4. **Optimizer state.** FSDP keys Adam's state by each weight's position in ``module.parameters()``
   (frozen ones counted); one-process and DDP checkpoints are keyed the same way here
   (``optimizer_states_keyed_by_position``), so each layout resumes the others. And FSDP shows every
   weight as a flat 1-D shard: which weights get no weight decay is read before (``modules/training/optimizer.py``).

``CPUFSDPStrategy`` is Lightning's ``FSDPStrategy`` that also runs on CPU processes (gloo): Lightning
refuses ``accelerator: cpu`` for FSDP and torch's FSDP wants ``device_id=cpu`` said explicitly. It
is what the CPU tests run (tests/test_sharded.py); on GPUs it is Lightning's strategy unchanged.
"""

import copy
from typing import Any

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


class CPUFSDPStrategy(FSDPStrategy):
    """``FSDPStrategy`` that takes ``accelerator: cpu`` too (2 CPU processes, gloo): for tests and debugging.

    Lightning's GPU check tests the exact class, so a subclass passes it; on a CPU, the model is
    wrapped here with ``device_id=cpu`` (torch's FSDP otherwise looks for an accelerator), with
    the same settings Lightning would use, and Lightning's own setup (activation checkpointing)
    follows. On a GPU nothing differs from ``FSDPStrategy``.
    """

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.root_device.type != "cpu":
            return super()._setup_model(model)
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrapped = FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                           mixed_precision=self.mixed_precision_config,
                                           sharding_strategy=self.sharding_strategy,
                                           device_id=torch.device("cpu"), **self.kwargs)
        self.kwargs.pop("auto_wrap_policy", None)  # applied above: Lightning would warn it is ignored
        return super()._setup_model(wrapped)

    def optimizer_state(self, optimizer) -> dict:
        """On a CPU, the full optimizer state is gathered without ``offload_to_cpu``: torch's FSDP gathers
        every state (exp_avg, exp_avg_sq) into one reused buffer and copies each out with ``.cpu()``,
        which on a CPU tensor copies nothing, so every state came out as the last one (torch 2.14)."""
        if self.root_device.type != "cpu" or self._state_dict_type != "full":
            return super().optimizer_state(optimizer)
        from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, OptimStateKeyType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp import StateDictType

        optimizer = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer's own optimizer
        with FSDP.state_dict_type(self.model, StateDictType.FULL_STATE_DICT,
                                  FullStateDictConfig(offload_to_cpu=False, rank0_only=True),
                                  FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=True)):
            state = FSDP.optim_state_dict(self.model, optimizer)
        if self.global_rank == 0:  # the standard layout, as FSDPStrategy stores it
            state = FSDP.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, self.model)
        return state


def clean_name(name: str) -> str:
    """A parameter's name without FSDP / activation-checkpointing / compile wrappers: the state-dict name.

    >>> clean_name("model.layers.0._fsdp_wrapped_module._checkpoint_wrapped_module.mlp.weight")
    'model.layers.0.mlp.weight'
    """
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def shards_parameters(strategy) -> bool:
    """Whether no single rank holds whole weights (FSDP, FSDP2, DeepSpeed ZeRO stage 3)."""
    if isinstance(strategy, (FSDPStrategy, ModelParallelStrategy)):
        return True
    return isinstance(strategy, DeepSpeedStrategy) and bool(getattr(strategy, "zero_stage_3", False))


def shards_training_state(strategy) -> bool:
    """FSDP, FSDP2 or DeepSpeed at any ZeRO stage: weights, gradients or optimizer state live in shards."""
    return shards_parameters(strategy) or isinstance(strategy, DeepSpeedStrategy)


def strategy_name(strategy) -> str:
    if isinstance(strategy, DeepSpeedStrategy):
        return f"DeepSpeed ZeRO stage {strategy.config.get('zero_optimization', {}).get('stage', '?')}"
    return type(strategy).__name__


def refuse_quantized_sharding(strategy, quantization: str | None) -> None:
    """Stop before any weight is loaded: packed 4/8-bit weights cannot be cut into shards."""
    if quantization is not None and shards_parameters(strategy):
        raise ValueError(
            f"model.quantization: {quantization} cannot be trained under {strategy_name(strategy)}: bitsandbytes' "
            "packed 4/8-bit weights cannot be cut into shards. Use DDP (--trainer.strategy ddp; QLoRA fits a 7B "
            "model in one 24 GB GPU per rank) or drop model.quantization and keep the sharded strategy."
        )


def writes_checkpoint_folders(strategy) -> bool:
    """DeepSpeed (any stage) and FSDP with ``state_dict_type: sharded`` write a checkpoint as a folder."""
    return (isinstance(strategy, DeepSpeedStrategy) or getattr(strategy, "_state_dict_type", "full") == "sharded"
            or bool(getattr(strategy, "_save_distributed_checkpoint", False)))  # ModelParallelStrategy's default


def refuse_merge_from_checkpoint_folders(strategy) -> None:
    """Stop before training: the export of the best checkpoint cannot read a folder of shards."""
    if writes_checkpoint_folders(strategy):
        raise ValueError(
            f"{strategy_name(strategy)} writes checkpoints as folders of shards, and the merged export of the "
            "best checkpoint at the end of fit (merge.use_best: true) cannot read one. Set --merge.use_best false "
            "(export the end-of-fit weights, gathered whole on rank 0), or for FSDP "
            "trainer.strategy.init_args.state_dict_type: full (rank 0 writes one file; a PEFT checkpoint holds "
            "only the adapter weights anyway), or --merge.enabled false to skip the export."
        )


def gathered_full_state(trainer) -> dict[str, torch.Tensor]:
    """The LightningModule's whole state dict, on the CPU of rank 0 (an empty dict on the other
    ranks). A collective: every rank must call it."""
    strategy, module = trainer.strategy, trainer.lightning_module
    if isinstance(strategy, DeepSpeedStrategy):
        return _gathered_zero3_state(module, trainer.is_global_zero)
    if isinstance(strategy, FSDPStrategy):
        from lightning.fabric.strategies.fsdp import _get_full_state_dict_context

        with _get_full_state_dict_context(strategy.model, world_size=strategy.world_size):
            state = strategy.model.state_dict()  # the root FSDP unit wraps the LightningModule: its names
        return {clean_name(name): tensor for name, tensor in state.items()} if trainer.is_global_zero else {}
    if isinstance(strategy, ModelParallelStrategy):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(strategy.model, options=options)
        return {clean_name(name): tensor for name, tensor in state.items()} if trainer.is_global_zero else {}
    return {name: tensor.detach().cpu() for name, tensor in module.state_dict().items()}


def _gathered_zero3_state(module, is_global_zero: bool) -> dict[str, torch.Tensor]:
    """ZeRO-3: one parameter gathered at a time (never the whole model on a GPU), copied to rank 0's CPU.

    UNTESTED HERE (no GPU, no deepspeed on this machine; tests/test_sharded.py has the GPU test)."""
    import deepspeed

    state: dict[str, torch.Tensor] = {}
    for name, parameter in module.named_parameters():
        with deepspeed.zero.GatheredParameters([parameter], modifier_rank=None):
            if is_global_zero:
                state[name] = parameter.detach().to("cpu", copy=True)
    if is_global_zero:
        state.update({name: buffer.detach().cpu() for name, buffer in module.named_buffers()})
    return state


def unsharded_copy(pl_module, full_state: dict[str, torch.Tensor]) -> tuple[torch.nn.Module, Any]:
    """A plain CPU model and head built as ``configure_model`` builds them, holding ``full_state``'s
    weights (rank 0, for the merged export). Every trainable weight must be in ``full_state``."""
    model = pl_module.build_backbone()
    head = copy.deepcopy(pl_module.head)
    head.setup(model, pl_module.tokenizer)  # rebuilds a choice classifier whole (the old one was sharded)
    for prefix, target in (("model.", model), ("head.", head)):
        part = {name[len(prefix):]: tensor for name, tensor in full_state.items() if name.startswith(prefix)}
        trainable = {name for name, parameter in target.named_parameters() if parameter.requires_grad}
        missing = trainable - set(part)
        if missing:
            raise RuntimeError(f"the gathered state lacks {len(missing)} trainable weights of {prefix.rstrip('.')} "
                               f"(e.g. {sorted(missing)[0]}): the sharded gather went wrong")
        target.load_state_dict(part, strict=False)
    return model, head


def optimizer_states_keyed_by_position(module, optimizers: list, states: list[dict]) -> list[dict]:
    """Optimizer states keyed as FSDP keys them: each weight by its position in ``module.parameters()``
    (frozen weights counted too), not by its place in the optimizer's groups.

    A torch optimizer loads its state by the order of the weights in its groups, whatever the keys,
    so one process loads either; Lightning's FSDP resume looks each key up as a position in the model,
    so a one-process (or DDP) checkpoint of a PEFT run, keyed 0..n-1 over the trainable weights only,
    put the first Adam state on the embeddings. Under FSDP (keyed so already) nothing changes.
    """
    if not states or isinstance(module.trainer.strategy, (FSDPStrategy, ModelParallelStrategy, DeepSpeedStrategy)):
        return states
    position = {id(parameter): index for index, parameter in enumerate(module.parameters())}
    return [_rekeyed(state, [position[id(p)] for group in optimizer.param_groups for p in group["params"]])
            for optimizer, state in zip(optimizers, states)]


def _rekeyed(state: dict, new_keys: list[int]) -> dict:
    old_keys = [key for group in state["param_groups"] for key in group["params"]]  # the optimizer's order
    new_key = dict(zip(old_keys, new_keys))
    return {**state, "state": {new_key[key]: value for key, value in state["state"].items()},
            "param_groups": [{**group, "params": [new_key[key] for key in group["params"]]}
                             for group in state["param_groups"]]}
