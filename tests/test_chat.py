"""``sft chat`` on a tiny model: multi-turn history through the training chat template, /reset, /exit,
the reply streamed in pieces, exit code 0 from a pipe."""

import copy
import io
import subprocess
import sys
from pathlib import Path

import modules.generation.chat
from lightning_app import chat as chat_app
from lightning_app.main import main
from tests.test_cli import run_config  # noqa: F401 (the tiny CLI config fixture)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SYSTEM = {"role": "system", "content": "Be brief."}


def test_chat_keeps_history_resets_and_streams(run_config, monkeypatch):
    main(["fit", "--config", run_config])  # a checkpoint to chat with
    prompts, written = [], []
    render = modules.generation.chat.prompt_ids_for_generation

    def recording_render(tokenizer, messages, tools=None):
        prompts.append(copy.deepcopy(messages))
        return render(tokenizer, messages, tools)

    monkeypatch.setattr(modules.generation.chat, "prompt_ids_for_generation", recording_render)
    monkeypatch.setattr(chat_app, "write_now", written.append)
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\nhow are you\n/reset\nhi\n/exit\nnever read\n"))
    main(["chat", "--config", run_config, "--ckpt_path", "last", "--data.system_prompt", "Be brief.",
          "--model.generation.max_new_tokens", "12"])

    assert len(prompts) == 3  # "never read" after /exit is not answered
    first_reply = prompts[1][2]
    assert prompts[0] == [SYSTEM, {"role": "user", "content": "hello"}]
    assert prompts[1] == [SYSTEM, {"role": "user", "content": "hello"}, first_reply,
                          {"role": "user", "content": "how are you"}]  # 2 turns: the first reply is kept
    assert first_reply["role"] == "assistant" and first_reply["content"]
    assert prompts[2] == [SYSTEM, {"role": "user", "content": "hi"}]  # after /reset: only the system prompt stays
    assert "(conversation reset)\n" in written
    # each reply is written between "assistant: " and "\n", in more than one piece: streamed
    starts = [i for i, text in enumerate(written) if text == "assistant: "]
    assert len(starts) == 3
    first_pieces = written[starts[0] + 1 : written.index("\n", starts[0])]
    assert len(first_pieces) > 1 and "".join(first_pieces).strip() == first_reply["content"]


def test_chat_from_a_pipe_exits_cleanly(tiny_model_dir, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "lightning_app", "chat", "--model.model_name_or_path", str(tiny_model_dir),
         "--model.generation.max_new_tokens", "4", "--trainer.accelerator", "cpu"],
        input="hello\n/reset\nhi\n/exit\n", capture_output=True, text=True, cwd=tmp_path, timeout=600,
        env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("assistant: ") == 2 and "(conversation reset)" in done.stdout
