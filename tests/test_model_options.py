"""Model options: config overrides at load time (RoPE scaling past the trained length) and NEFTune."""

import math

import pytest
import torch

from modules.backbone.loading import load_causal_lm
from modules.sft_module import SFTModule
from tests.tolerances import assert_close_normwise, reordering_bound

LINEAR_ROPE = {"rope_parameters": {"rope_type": "linear", "factor": 2.0}, "max_position_embeddings": 1024}


@pytest.mark.numerics
def test_linear_rope_scaling_override_reaches_positions_past_the_original_limit(tiny_model_dir):
    """Linear scaling by 2 divides positions by 2: the scaled model at positions 0, 2, …, 598 (past the
    tiny model's 512) computes exactly what the original computes at 0, 1, …, 299."""
    original = load_causal_lm(str(tiny_model_dir)).eval()
    scaled = load_causal_lm(str(tiny_model_dir), config_overrides=LINEAR_ROPE).eval()
    assert original.config.max_position_embeddings == 512
    assert scaled.config.max_position_embeddings == 1024
    assert scaled.config.rope_parameters["rope_type"] == "linear"

    input_ids = torch.randint(0, 256, (1, 300))
    positions = torch.arange(300).unsqueeze(0)
    assert int((2 * positions).max()) > 512
    with torch.no_grad():
        expected = original(input_ids, position_ids=positions).logits
        stretched = scaled(input_ids, position_ids=2 * positions).logits
        unscaled_far = original(input_ids, position_ids=2 * positions).logits
    # angles of 2p at half the frequency against p: equal up to rounding, through the tiny model (rule 2)
    assert_close_normwise(stretched, expected, reordering_bound(torch.float32))
    assert not torch.allclose(unscaled_far, expected, atol=1e-3)  # without the override it differs


def test_the_older_rope_scaling_name_still_works_and_keeps_rope_theta(tiny_model_dir):
    scaled = load_causal_lm(str(tiny_model_dir), config_overrides={"rope_scaling": {"rope_type": "linear", "factor": 2.0}})
    assert scaled.config.rope_parameters == {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}


def test_an_unknown_config_override_names_the_key_and_the_config_class(tiny_model_dir):
    with pytest.raises(ValueError, match=r"'rope_scalling' is not a setting of LlamaConfig"):
        load_causal_lm(str(tiny_model_dir), config_overrides={"rope_scalling": {"factor": 2.0}})


def test_neftune_noise_in_training_only_with_the_papers_scale(tiny_model_dir):
    alpha = 5.0
    module = SFTModule(model_name_or_path=str(tiny_model_dir), neftune_alpha=alpha)
    module.configure_model()
    embeddings = module.model.get_input_embeddings()
    input_ids = torch.randint(0, 256, (2, 64))  # (batch, seq)
    clean = embeddings.weight[input_ids].detach()  # (batch, seq, hidden)
    bound = alpha / math.sqrt(64 * clean.shape[-1])  # alpha / sqrt(seq_len * hidden_size)

    module.train()
    noise = (embeddings(input_ids) - clean).detach()
    assert noise.abs().max() <= bound * (1 + 1e-5)
    assert noise.abs().max() > 0.95 * bound  # uniform on [-bound, bound]: 4096 draws reach near the edge
    assert abs(noise.mean()) < 0.05 * bound

    module.eval()  # validation, test and predict
    torch.testing.assert_close(embeddings(input_ids), clean, rtol=0, atol=0)


def test_neftune_alpha_must_be_positive():
    with pytest.raises(ValueError, match="neftune_alpha must be > 0"):
        SFTModule(neftune_alpha=0.0)
