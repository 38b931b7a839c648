"""``sft chat``: talk with a model in the terminal, its replies streamed as they are generated.

The model is built as ``predict`` builds it (the config through LightningCLI, then the module's
``configure_model``), from a checkpoint (``--ckpt_path FILE`` or ``last``: its base model and its
trained weights), a merged folder or any model name (``--model.model_name_or_path``). The system
prompt is ``data.system_prompt``, the generation settings ``model.generation``. The conversation
itself lives in ``modules/generation/chat.py``.
"""

import argparse
import sys

HELP_LINE = "Type a message and press Enter; /reset starts a new conversation, /exit (or Ctrl-D) ends."


def chat_command(argv: list[str]) -> None:
    """sft chat [--config X.yaml] [--ckpt_path FILE|last] [--model.model_name_or_path M] [any config option]."""
    parser = argparse.ArgumentParser(prog="sft chat", description=chat_command.__doc__, epilog=HELP_LINE)
    parser.add_argument("--ckpt_path", help="a checkpoint of `sft fit`, or `last` (the newest of the config's run name)")
    own_args, cli_args = parser.parse_known_args(argv)
    from callbacks.merge_adapters import load_checkpoint_weights
    from lightning_app.cli import SFTCLI  # imported late: Lightning's import is slow
    from modules.generation.chat import ChatSession, chat_loop

    cli = SFTCLI(args=cli_args, run=False)  # builds the objects, loads no weights
    module = cli.model
    checkpoint = checkpoint_path(own_args.ckpt_path, cli.config)
    if checkpoint:
        use_checkpoint_base_model(module, checkpoint)
    module.configure_model()
    if checkpoint:
        load_checkpoint_weights(module, checkpoint)
    module.to(cli.trainer.strategy.root_device).eval()
    session = ChatSession(module.model, module.tokenizer, module.generation.default, cli.datamodule.spec.system_prompt)
    write_now(f"chatting with {checkpoint or module.model_name_or_path}. {HELP_LINE}\n")
    try:
        chat_loop(session, typed_lines(), write_now)
    except KeyboardInterrupt:
        write_now("\n")


def checkpoint_path(ckpt_path: str | None, config) -> str | None:
    """``last`` → the newest last.ckpt of the config's run name (as fit/predict resolve it)."""
    if ckpt_path != "last":
        return ckpt_path
    from lightning_app.run_dirs import newest_last_checkpoint

    logger_args = config.trainer.logger.init_args
    return str(newest_last_checkpoint(logger_args.save_dir, logger_args.name))


def use_checkpoint_base_model(module, checkpoint: str) -> None:
    """As with ``sft predict --ckpt_path``: the checkpoint fixes the base model, the config the rest."""
    import torch

    saved = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
    base_model = saved.get("hyper_parameters", {}).get("model_name_or_path")
    if base_model and base_model != module.model_name_or_path:
        write_now(f"base model from the checkpoint: {base_model} (not {module.model_name_or_path})\n")
        module.model_name_or_path = base_model


def typed_lines(prompt: str = "you: "):
    """The user's lines, from a terminal or a pipe, until end of input."""
    while True:
        try:
            yield input(prompt)
        except EOFError:
            return


def write_now(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
