"""Answer generation: settings per question type from YAML, decoding only the new tokens."""

from dataclasses import asdict, dataclass, field

import torch

from modules.generation.decoding import can_decode, decode


@dataclass
class GenerationSettings:
    """How answers are generated. Greedy unless ``do_sample`` is set."""

    max_new_tokens: int = 256
    """Longest answer, in tokens."""
    do_sample: bool = False
    """Sample instead of greedy decoding."""
    temperature: float = 1.0
    """Sampling temperature (only with do_sample)."""
    top_p: float = 1.0
    """Nucleus sampling threshold (only with do_sample)."""
    num_samples: int = 1
    """Answers per prompt; more than one gives a list (code-generate: pass@k needs several)."""

    def generate_kwargs(self) -> dict:
        kwargs = asdict(self)
        kwargs["num_return_sequences"] = kwargs.pop("num_samples")
        if not self.do_sample:  # avoid transformers' warnings about unused sampling knobs
            kwargs.pop("temperature")
            kwargs.pop("top_p")
        return kwargs


def default_per_type() -> dict[str, GenerationSettings]:
    """Code answers are sampled 3 times (pass@1 and pass@3, as in the seed's results)."""
    return {"code-generate": GenerationSettings(max_new_tokens=384, do_sample=True, temperature=0.8, top_p=0.95,
                                                num_samples=3)}


@dataclass
class GenerationPlan:
    """Default settings plus overrides per question type."""

    default: GenerationSettings = field(default_factory=GenerationSettings)
    per_type: dict[str, GenerationSettings] = field(default_factory=default_per_type)
    max_rows: int | None = None
    """Most rows decoded at once (prompts × samples); the batch's other prompts join as rows finish."""

    def for_type(self, record_type: str) -> GenerationSettings:
        return self.per_type.get(record_type, self.default)

    def key_for_type(self, record_type: str) -> str:
        """The same for two types exactly when they are generated with the same settings."""
        return repr(self.for_type(record_type))

    def greedy_preview(self, max_new_tokens: int) -> "GenerationPlan":
        """Each type greedy, one answer, at most ``max_new_tokens`` (or its own cap where lower): the
        validation answer table's plan, cheap and the same at every validation.

        >>> plan = GenerationPlan(GenerationSettings(max_new_tokens=256), per_type={"choice": GenerationSettings(16)})
        >>> preview = plan.greedy_preview(32)
        >>> preview.for_type("math").max_new_tokens, preview.for_type("choice").max_new_tokens
        (32, 16)
        >>> preview.for_type("code-generate").do_sample, preview.for_type("code-generate").num_samples
        (False, 1)
        """
        def shortened(settings: GenerationSettings) -> GenerationSettings:
            return GenerationSettings(max_new_tokens=min(settings.max_new_tokens, max_new_tokens))

        return GenerationPlan(shortened(self.default), {name: shortened(settings) for name, settings in self.per_type.items()},
                              max_rows=self.max_rows)


@torch.no_grad()
def generate_answers(model, tokenizer, input_ids, attention_mask, settings: GenerationSettings,
                     max_rows: int | None = None) -> list:
    """Continue left-padded prompts (batch, seq); one string per row, or a list of samples.

    ``modules/generation/decoding.py``'s loop, in which finished rows leave the batch, serves the models it can
    (greedy answers equal ``generate``'s); the others (prompt-learning PEFT methods) use ``generate``.
    """
    first_column = int(attention_mask.any(dim=0).float().argmax())  # padding every row has is dropped
    input_ids, attention_mask = input_ids[:, first_column:], attention_mask[:, first_column:]
    if can_decode(model):
        new_tokens = decode(model, input_ids, attention_mask, [tokenizer.eos_token_id], settings.max_new_tokens,
                            settings.do_sample, settings.temperature, settings.top_p, settings.num_samples,
                            max_rows=max_rows)
    else:
        output_ids = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **settings.generate_kwargs(),
        )  # (batch * num_samples, seq + new)
        new_tokens = output_ids[:, input_ids.shape[1] :]
    texts = [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    if settings.num_samples == 1:
        return texts
    n = settings.num_samples
    return [texts[row * n : (row + 1) * n] for row in range(input_ids.shape[0])]


def generate_for_rows(model, tokenizer, batch: dict, plan: GenerationPlan, rows: list[int]) -> list:
    """Answers for ``rows`` of a batch, each row generated with its question type's settings: one
    call per distinct setting, so types that share settings (every greedy type by default) decode together."""
    answers: dict[int, str | list[str]] = {}
    rows_by_settings: dict[str, list[int]] = {}
    for row in rows:
        rows_by_settings.setdefault(plan.key_for_type(batch["types"][row]), []).append(row)
    for same_settings_rows in rows_by_settings.values():
        selected = torch.tensor(same_settings_rows, device=batch["prompt_ids"].device)
        settings = plan.for_type(batch["types"][same_settings_rows[0]])
        generated = generate_answers(model, tokenizer, batch["prompt_ids"][selected],
                                     batch["prompt_attention_mask"][selected], settings, plan.max_rows)
        answers.update(zip(same_settings_rows, generated))
    return [answers[row] for row in rows]
