"""The trained tokens of each assistant turn equal those TRL 1.16's SFTTrainer trains (its ``labels``) for the
conversation cut at that turn in prompt-completion form (prompt = messages before the turn,
completion = the turn)."""

import datasets
from trl import SFTConfig, SFTTrainer

from core.constants import IGNORE_INDEX
from datamodules.chat_tokens import tokenize_conversation
from tests.tiny import build_model

CONVERSATION = [
    {"role": "system", "content": "You answer tersely."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris"},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome, of course."},
    {"role": "user", "content": "Thanks"},
    {"role": "assistant", "content": "You're welcome!"},
]


def trl_processed(tokenizer, rows: list[dict], tmp_path) -> datasets.Dataset:
    trainer = SFTTrainer(
        model=build_model(),
        args=SFTConfig(output_dir=str(tmp_path), report_to="none", max_length=None, completion_only_loss=True, bf16=False, use_cpu=True),
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    return trainer.train_dataset


def test_every_turn_matches_trl_prompt_completion(tokenizer, tmp_path):
    assistant_turns = [i for i, m in enumerate(CONVERSATION) if m["role"] == "assistant"]
    rows = [{"prompt": CONVERSATION[:i], "completion": [CONVERSATION[i]]} for i in assistant_turns]
    trl_rows = trl_processed(tokenizer, rows, tmp_path)

    ours_all_turns = tokenize_conversation(tokenizer, CONVERSATION)
    union_of_trl_masks = [0] * len(ours_all_turns["input_ids"])
    for turn, trl_row in zip(assistant_turns, trl_rows):
        ours = tokenize_conversation(tokenizer, CONVERSATION[: turn + 1], train_on="last_assistant")
        assert ours["input_ids"] == trl_row["input_ids"]
        assert ours["labels"] == trl_row["labels"]
        # TRL's cut conversation is a prefix of the whole one; its trained tokens mark our turn.
        assert ours_all_turns["input_ids"][: len(trl_row["input_ids"])] == trl_row["input_ids"]
        for position, label in enumerate(trl_row["labels"]):
            union_of_trl_masks[position] |= int(label != IGNORE_INDEX)
    assert [int(label != IGNORE_INDEX) for label in ours_all_turns["labels"]] == union_of_trl_masks


def test_single_turn_matches_trl(tokenizer, tmp_path):
    rows = [{"prompt": CONVERSATION[:2], "completion": [CONVERSATION[2]]}]
    trl_row = trl_processed(tokenizer, rows, tmp_path)[0]
    ours = tokenize_conversation(tokenizer, CONVERSATION[:3])
    assert ours["input_ids"] == trl_row["input_ids"]
    assert ours["labels"] == trl_row["labels"]
    assert sum(label != IGNORE_INDEX for label in trl_row["labels"]) == len("Paris") + 2  # answer bytes + <|im_end|> + newline
