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
    ("no-such-alias", "neither the default alias"),
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
