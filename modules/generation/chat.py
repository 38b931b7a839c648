"""A multi-turn chat with a model, its reply streamed as it is generated (``sft chat``).

The prompt is rendered by the same chat-template code as training and predict
(``datamodules/chat_tokens.py``), from the whole conversation so far, with the configured system
prompt first. Generation uses the configured default settings (``model.generation``), one answer.

>>> session = ChatSession(model, tokenizer, GenerationSettings(max_new_tokens=8), "Be brief.")
>>> reply = session.reply("hello", write=lambda text: None)   # streams each piece to ``write``
>>> [message["role"] for message in session.messages]
['system', 'user', 'assistant']
>>> session.messages[-1]["content"] == reply
True
"""

from collections.abc import Callable, Iterable
from dataclasses import replace

import torch
from transformers.generation.streamers import BaseStreamer

from core.record import Message
from datamodules.chat_tokens import prompt_ids_for_generation
from modules.generation.plan import GenerationSettings

RESET, EXIT = "/reset", "/exit"


class TokenStream(BaseStreamer):
    """Writes a reply as ``generate`` produces it: each new token's text as soon as it decodes to whole
    characters (a byte-level token may be half of one: held back until the rest arrives)."""

    def __init__(self, tokenizer, write: Callable[[str], None]):
        self.tokenizer, self.write = tokenizer, write
        self.reply_ids: list[int] = []
        self.written = 0  # characters of the decoded reply already written
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate's first call hands over the prompt (1, seq)
            self.prompt_seen = True
            return
        self.reply_ids.extend(value.reshape(-1).tolist())  # (1,): the new token
        self._write_new_text(final=False)

    def end(self) -> None:
        self._write_new_text(final=True)

    def _write_new_text(self, final: bool) -> None:
        text = self.tokenizer.decode(self.reply_ids, skip_special_tokens=True)
        if (final or not text.endswith("\ufffd")) and len(text) > self.written:
            self.write(text[self.written :])
            self.written = len(text)


class ChatSession:
    """The conversation so far and how to continue it."""

    def __init__(self, model, tokenizer, settings: GenerationSettings, system_prompt: str | None = None):
        self.model, self.tokenizer, self.system_prompt = model, tokenizer, system_prompt
        self.settings = replace(settings, num_samples=1)  # a chat shows one answer
        self.messages: list[Message] = []
        self.reset()

    def reset(self) -> None:
        """Forget the conversation; the system prompt stays."""
        self.messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []

    @torch.no_grad()
    def reply(self, user_text: str, write: Callable[[str], None]) -> str:
        """Add the user's turn, stream the model's answer to ``write``, add it to the conversation."""
        self.messages.append({"role": "user", "content": user_text})
        prompt_ids = prompt_ids_for_generation(self.tokenizer, self.messages)
        input_ids = torch.tensor([prompt_ids], device=self.model.device)  # (1, prompt)
        stream = TokenStream(self.tokenizer, write)
        output_ids = self.model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=stream,
            pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
            **self.settings.generate_kwargs(),
        )  # (1, prompt + new)
        answer = self.tokenizer.decode(output_ids[0, input_ids.shape[1] :], skip_special_tokens=True).strip()
        self.messages.append({"role": "assistant", "content": answer})
        return answer


def chat_loop(session: ChatSession, user_lines: Iterable[str], write: Callable[[str], None]) -> None:
    """Answer each line in turn until ``/exit`` or the end of input; ``/reset`` starts over."""
    for line in user_lines:
        text = line.strip()
        if not text:
            continue
        if text == EXIT:
            break
        if text == RESET:
            session.reset()
            write("(conversation reset)\n")
            continue
        write("assistant: ")
        session.reply(text, write)
        write("\n")
