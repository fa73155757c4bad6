"""Pooled capture must not depend on batching or padding, and must match a plain reference."""

from __future__ import annotations

import math

import pytest
import torch

from emolib.capture import pooled_means, record_residual, token_activations
from emolib.steering import active_hooks

TEXTS = [
    "The kettle clicked off and the kitchen went quiet except for the rain on the window.",
    "Short.",
    "She folded the letter twice, put it in her coat pocket, and walked out into the cold street "
    "without looking back at the house where she had lived for eleven years.",
    "Numbers: one two three four five six seven eight nine ten eleven twelve thirteen.",
    "A long text " * 30,
]


def reference_means(model, tok, texts, layers, start):
    """Unbatched, one text at a time, through the public per-token path."""
    out = []
    for t in texts:
        acts, _ = token_activations(model, tok, t, layers)
        if acts.shape[0] <= start:
            out.append(torch.full((len(layers), acts.shape[-1]), math.nan))
        else:
            out.append(acts[start:].double().mean(0).float())
    return torch.stack(out)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_pooled_equals_unbatched_reference(tiny, side, batch_size):
    model, tok = tiny
    layers = [0, 2, 3]
    start = 5
    ref = reference_means(model, tok, TEXTS, layers, start)
    old = tok.padding_side
    tok.padding_side = side
    try:
        got = pooled_means(model, tok, TEXTS, layers=layers, start=start, batch_size=batch_size)
    finally:
        tok.padding_side = old
    assert got.short_ids == [1]
    assert got.means.shape == (len(TEXTS), len(layers), model.config.hidden_size)
    ok = got.ok
    assert torch.isnan(got.means[~ok]).all()
    assert torch.allclose(got.means[ok], ref[ok], atol=1e-5), (got.means[ok] - ref[ok]).abs().max()
    assert active_hooks(model) == 0


def test_pooled_counts_and_ids(tiny):
    model, tok = tiny
    got = pooled_means(model, tok, TEXTS, layers=[-1], start=3, ids=["a", "b", "c", "d", "e"])
    n = [len(tok(t)["input_ids"]) for t in TEXTS]
    assert got.n_tokens.tolist() == [max(0, k - 3) for k in n]
    assert got.short_ids == ["b"]
    assert got.layers == [3]


def test_block_output_is_not_final_norm(tiny):
    """The last block's output is read before the final norm (unlike hidden_states[-1] in transformers 5)."""
    model, tok = tiny
    ids = tok(TEXTS[0], return_tensors="pt")["input_ids"]
    with torch.inference_mode(), record_residual(model, [3]) as rec:
        out = model(ids, output_hidden_states=True)
    block = rec[3][0]
    assert not torch.allclose(block, out.hidden_states[-1].float(), atol=1e-4)
    with torch.inference_mode(), record_residual(model, [2]) as rec2:
        model(ids, output_hidden_states=True)
    assert torch.allclose(rec2[2][0], out.hidden_states[3].float(), atol=1e-6)


def test_hooks_removed_after_exception(tiny):
    model, _ = tiny
    with pytest.raises(RuntimeError, match="boom"):
        with record_residual(model, [0, 1]):
            raise RuntimeError("boom")
    assert active_hooks(model) == 0


def test_bad_layer_is_a_clear_error(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="4 blocks"):
        pooled_means(model, tok, ["hello there"], layers=[7], start=0)
