"""Answer generation: settings per question type from YAML, decoding only the new tokens."""

from dataclasses import asdict, dataclass, field

import torch


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

    def for_type(self, record_type: str) -> GenerationSettings:
        return self.per_type.get(record_type, self.default)


@torch.no_grad()
def generate_answers(model, tokenizer, input_ids, attention_mask, settings: GenerationSettings) -> list:
    """Continue left-padded prompts (batch, seq); one string per row, or a list of samples."""
    output_ids = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **settings.generate_kwargs(),
    )  # (batch * num_samples, seq + new)
    texts = tokenizer.batch_decode(output_ids[:, input_ids.shape[1] :], skip_special_tokens=True)
    texts = [text.strip() for text in texts]
    if settings.num_samples == 1:
        return texts
    n = settings.num_samples
    return [texts[row * n : (row + 1) * n] for row in range(input_ids.shape[0])]


def generate_for_rows(model, tokenizer, batch: dict, plan: GenerationPlan, rows: list[int]) -> list:
    """Answers for ``rows`` of a batch, each row generated with its question type's settings."""
    answers: dict[int, str | list[str]] = {}
    rows_by_type: dict[str, list[int]] = {}
    for row in rows:
        rows_by_type.setdefault(batch["types"][row], []).append(row)
    for record_type, type_rows in rows_by_type.items():
        selected = torch.tensor(type_rows, device=batch["prompt_ids"].device)
        generated = generate_answers(model, tokenizer, batch["prompt_ids"][selected],
                                     batch["prompt_attention_mask"][selected], plan.for_type(record_type))
        answers.update(zip(type_rows, generated))
    return [answers[row] for row in rows]
