"""modules/peft/methods.py alone says what each PEFT method is: virtual tokens prepended or cached,
packing refused, merging refused. The answers per method, and no other file asking peft itself."""

import re
from pathlib import Path

import pytest
from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model

from modules.peft.methods import learns_virtual_tokens, packing_refusal, prepended_positions, unmergeable_reason, \
    virtual_tokens_as_cache
from tests.tiny import build_model

PROJECT = Path(__file__).resolve().parents[3]
VIRTUAL = 3
# method: (learns virtual tokens, as a cache, positions prepended, mergeable)
METHODS = {
    "lora": (LoraConfig(r=2, target_modules=["q_proj"]), False, False, 0, True),
    "ia3": (IA3Config(target_modules=["down_proj"], feedforward_modules=["down_proj"]), False, False, 0, True),
    "prompt_tuning": (PromptTuningConfig(num_virtual_tokens=VIRTUAL), True, False, VIRTUAL, False),
    "p_tuning": (PromptEncoderConfig(num_virtual_tokens=VIRTUAL, encoder_hidden_size=8), True, False, VIRTUAL, False),
    "prefix_tuning": (PrefixTuningConfig(num_virtual_tokens=VIRTUAL), True, True, 0, False),
}


@pytest.mark.parametrize("name", METHODS)
def test_each_method_is_what_methods_py_says(name):
    config, virtual, as_cache, prepended, mergeable = METHODS[name]
    config.task_type = "CAUSAL_LM"
    model = get_peft_model(build_model(), config)
    assert learns_virtual_tokens(model.active_peft_config) is virtual
    assert virtual_tokens_as_cache(model.active_peft_config) is as_cache
    assert prepended_positions(model) == prepended
    assert (packing_refusal(model.active_peft_config) is None) is not virtual  # packing refused exactly for virtual tokens
    assert (unmergeable_reason(model) is None) is mergeable


def test_a_plain_model_is_no_method():
    model = build_model()
    assert prepended_positions(model) == 0 and unmergeable_reason(model) is None
    assert not learns_virtual_tokens(None) and packing_refusal(None) is None


def test_no_other_file_asks_peft_what_a_method_is():
    asking = re.compile(r"\.is_prompt_learning\b|PeftType\.(PROMPT_TUNING|P_TUNING|PREFIX_TUNING|MULTITASK_PROMPT_TUNING|CARTRIDGE)")
    askers = [str(path.relative_to(PROJECT)) for package in ("core", "datamodules", "modules", "evaluation", "callbacks",
                                                              "lightning_app")
              for path in (PROJECT / package).rglob("*.py") if asking.search(path.read_text(encoding="utf-8"))]
    assert askers == ["modules/peft/methods.py"]
