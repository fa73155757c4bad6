"""Model loading: the offline default, the tiny factory, clear errors for bad specs."""

from __future__ import annotations

import time

import pytest
import torch

from emolib.models import ModelLoadError, find_layers, load_model, tiny_model


def test_default_model_loads_offline_and_fast(smollm):
    model, tok, info = smollm
    assert info.n_layers == 30 and info.width == 576
    assert info.source == "embedded-gguf" and len(info.revision) == 64
    assert info.has_chat_template
    assert model.config.rope_parameters["rope_theta"] == 100000.0  # transformers 4.x read 10000 here
    t0 = time.perf_counter()
    load_model("smollm2-135m-instruct")  # second load comes from the converted cache
    assert time.perf_counter() - t0 < 10


def test_default_model_predicts_sensible_text(smollm):
    model, tok, _ = smollm
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        nxt = model(ids).logits[0, -1].argmax()
    assert "Paris" in tok.decode(nxt)


def test_tiny_model_is_deterministic():
    m1, tok = tiny_model(seed=3)
    m2, _ = tiny_model(seed=3)
    ids = tok("hello there", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        assert torch.equal(m1(ids).logits, m2(ids).logits)
    assert len(find_layers(m1)) == 4


@pytest.mark.parametrize("spec,match", [
    ("no-such-alias", "neither an embedded alias"),
    ("/nonexistent/model.gguf", "GGUF file not found"),
    ("someorg/some-model-that-does-not-exist", "offline"),
])
def test_bad_spec_is_a_clear_error(spec, match):
    with pytest.raises(ModelLoadError, match=match):
        load_model(spec)


def test_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))


def test_find_layers_names_the_class():
    with pytest.raises(ValueError, match="Linear"):
        find_layers(torch.nn.Linear(2, 2))


def _tiny(family: str):
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        PhiConfig,
        PhiForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(0)
    small = dict(vocab_size=300)
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=4, n_positions=128, **small))
    if family == "neox":
        return GPTNeoXForCausalLM(GPTNeoXConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
                                                intermediate_size=64, max_position_embeddings=128, **small))
    if family == "phi":
        return PhiForCausalLM(PhiConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
                                        intermediate_size=64, max_position_embeddings=128, **small))
    return Qwen2ForCausalLM(Qwen2Config(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
                                        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128, **small))


@pytest.mark.parametrize("family", ["gpt2", "neox", "phi", "qwen2"])
def test_capture_and_steering_work_across_families(family):
    """Block discovery, block-output capture and steering on other architectures (random tiny configs)."""
    from emolib.capture import record_residual
    from emolib.steering import active_hooks, steer

    model = _tiny(family).eval()
    blocks = find_layers(model)
    assert len(blocks) == 3
    ids = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(0))
    v = torch.randn(32)
    with torch.inference_mode():
        with record_residual(model, [1]) as plain:
            base = model(ids).logits
        with steer(model, v, layers=[1], strength=1.0, norms=2.0, scope=5), record_residual(model, [1]) as rec:
            steered = model(ids).logits
    assert plain[1][0].shape == (1, 12, 32)
    added = rec[1][0] - plain[1][0]
    assert torch.allclose(added[0, 5:], (2.0 * v / v.norm()).expand(7, -1), atol=1e-5)
    assert torch.equal(added[0, :5], torch.zeros(5, 32))
    assert torch.equal(base[0, :5], steered[0, :5]) and not torch.allclose(base[0, 5:], steered[0, 5:])
    assert active_hooks(model) == 0
