"""Code shipped with a model runs only when asked; our own checkpoint reads use weights_only."""

import pytest

import core.tokenizer
import modules.backbone.loading
from core.tokenizer import load_tokenizer
from modules.backbone.loading import load_causal_lm


@pytest.mark.parametrize("asked", [None, True])
def test_trust_remote_code_is_off_unless_asked(tiny_model_dir, monkeypatch, asked):
    seen = []
    for module, auto in ((modules.backbone.loading, "AutoModelForCausalLM"), (modules.backbone.loading, "AutoConfig"),
                         (core.tokenizer, "AutoTokenizer")):
        real = getattr(module, auto).from_pretrained

        def spy(*args, _real=real, _name=auto, **kwargs):
            seen.append((_name, kwargs.get("trust_remote_code")))
            return _real(*args, **kwargs)

        monkeypatch.setattr(getattr(module, auto), "from_pretrained", spy)
    options = {} if asked is None else {"trust_remote_code": asked}
    load_causal_lm(str(tiny_model_dir), **options)
    load_tokenizer(str(tiny_model_dir), **options)
    assert {name for name, _ in seen} == {"AutoModelForCausalLM", "AutoConfig", "AutoTokenizer"}
    assert all(trusted is bool(asked) for _, trusted in seen), seen


@pytest.mark.parametrize("flag, expected", [([], False), (["--model.trust_remote_code", "true"], True)])
def test_the_config_option_reaches_model_and_tokenizer(tiny_model_dir, tmp_path, flag, expected):
    from lightning_app.cli import SFTCLI

    train = tmp_path / "train.jsonl"
    train.write_text('{"question": "q", "answer": "a"}\n')
    cli = SFTCLI(args=["--model.model_name_or_path", str(tiny_model_dir), "--data.format", "qa",
                       "--data.train_path", str(train), "--trainer.logger", "false", *flag], run=False)
    assert cli.model.trust_remote_code is expected
    assert cli.datamodule.trust_remote_code is expected  # linked: the tokenizer follows the model
