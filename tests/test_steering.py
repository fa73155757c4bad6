"""Steering: exact no-op at strength 0, scoped positions, KV-cache generation, clean exits."""

from __future__ import annotations

import pytest
import torch

from emolib.capture import record_residual
from emolib.steering import active_hooks, mean_residual_norms, steer, unit

PROMPTS = ["The cat sat on the warm windowsill and watched", "Tell me about the history of bread making in"]


def _batch(tok, texts, side="left"):
    old = tok.padding_side
    tok.padding_side = side
    try:
        return tok(texts, return_tensors="pt", padding=True)
    finally:
        tok.padding_side = old


@pytest.fixture()
def direction(tiny):
    g = torch.Generator().manual_seed(1)
    return torch.randn(tiny[0].config.hidden_size, generator=g)


def test_strength_zero_is_bit_identical(tiny, direction):
    model, tok = tiny
    enc = _batch(tok, PROMPTS)
    with torch.inference_mode():
        base = model(**enc).logits
        with steer(model, direction, layers=[1, 2], strength=0.0, norms=5.0):
            same = model(**enc).logits
    assert torch.equal(base, same)


def test_steering_changes_only_scoped_positions(tiny, direction):
    model, tok = tiny
    ids = tok(PROMPTS[0], return_tensors="pt")["input_ids"]
    k = 4
    with torch.inference_mode():
        base = model(ids).logits
        with steer(model, direction, layers=[1], strength=2.0, norms=3.0, scope=k):
            steered = model(ids).logits
    diff = (steered - base).abs().amax(dim=-1)[0]
    assert torch.all(diff[:k] == 0), "positions before the scope must be untouched (causal model)"
    assert torch.all(diff[k:] > 0)
    assert active_hooks(model) == 0


def test_delta_has_the_paper_scale(tiny, direction):
    model, tok = tiny
    ids = tok(PROMPTS[1], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        with record_residual(model, [2]) as plain:
            model(ids)
        with steer(model, direction, layers=[2], strength=0.5, norms={2: 4.0}), record_residual(model, [2]) as rec:
            model(ids)
    added = rec[2][0] - plain[2][0]
    expected = 0.5 * 4.0 * unit(direction)
    assert torch.allclose(added[0], expected.expand_as(added[0]), atol=1e-5)


def test_hooks_removed_after_exception(tiny, direction):
    model, _ = tiny
    with pytest.raises(KeyError):
        with steer(model, direction, layers=[0, 3], strength=1.0):
            raise KeyError("inside")
    assert active_hooks(model) == 0


def test_rerunning_a_cell_never_stacks_hooks(tiny, direction):
    model, tok = tiny
    ids = tok(PROMPTS[0], return_tensors="pt")["input_ids"]
    outs = []
    for _ in range(2):  # the same "cell" run twice
        with torch.inference_mode(), steer(model, direction, layers=[1], strength=1.0):
            outs.append(model(ids).logits)
            assert active_hooks(model) == 2  # one block hook + the position tracker
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("scope", ["all", "prompt", "response"])
def test_generate_scopes_with_kv_cache(tiny, direction, scope):
    """During cached generation, each forward step adds the vector exactly where the scope says.

    A spy registered before ``steer`` sees the raw block output; ``record_residual`` entered after
    it sees the steered output; their difference is what steering added at each step.
    """
    model, tok = tiny
    enc = _batch(tok, PROMPTS, side="left")
    layer, n_new = 1, 5
    raw = []

    def spy(_m, _a, out):
        raw.append(out.detach().clone().float())

    handle = model.model.layers[layer].register_forward_hook(spy)
    try:
        with torch.inference_mode(), steer(model, direction, layers=[layer], strength=3.0, norms=2.0, scope=scope), \
                record_residual(model, [layer]) as rec:
            out = model.generate(**enc, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
    finally:
        handle.remove()
    steered = rec[layer]
    assert len(raw) == len(steered) == n_new  # prompt pass + one cached pass per further token
    assert out.shape[1] == enc["input_ids"].shape[1] + n_new
    delta = 3.0 * 2.0 * unit(direction)
    prompt_added = steered[0] - raw[0]
    if scope == "response":
        assert torch.equal(prompt_added, torch.zeros_like(prompt_added))
    else:
        assert torch.allclose(prompt_added, delta.expand_as(prompt_added), atol=1e-5)
    for r, s_ in zip(raw[1:], steered[1:]):
        assert s_.shape[1] == 1  # the KV cache is in use: one new position per step
        added = s_ - r
        if scope == "prompt":
            assert torch.equal(added, torch.zeros_like(added))
        else:
            assert torch.allclose(added, delta.expand_as(added), atol=1e-5)
    assert active_hooks(model) == 0


def test_residual_norms_exclude_first_token(tiny):
    model, tok = tiny
    norms = mean_residual_norms(model, tok, PROMPTS, layers=[0, 3])
    assert norms.shape == (2,)
    assert torch.all(norms > 0)


def test_wrong_width_is_a_clear_error(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="width 10 .* width 64"):
        with steer(model, torch.ones(10), layers=[0], strength=1.0):
            pass


def test_add_vector_equals_steer_on_every_position(tiny, direction):
    """The minimal hook (the teaching exercise's answer) and ``steer`` with raw units agree exactly."""
    from emolib.models import find_layers
    from emolib.steering import add_vector

    model, tok = tiny
    ids = torch.tensor([tok("A small test sentence for both hooks.")["input_ids"]])
    delta = 0.7 * unit(direction)
    before = [len(blk._forward_hooks) for blk in find_layers(model)]  # transformers may hold its own
    with torch.inference_mode():
        with add_vector(model, 1, delta):
            a = model(input_ids=ids).logits
        with steer(model, direction, 1, strength=0.7, norms=None):
            b = model(input_ids=ids).logits
        plain = model(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-6) and not torch.allclose(a, plain, atol=1e-4)
    assert [len(blk._forward_hooks) for blk in find_layers(model)] == before
