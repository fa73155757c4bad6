"""Many steering conditions in one batch (shared prefix cache, one condition per row) give what steering
each condition alone gives: the fast path of the stage-06 sweeps must not change their numbers."""

from __future__ import annotations

import pytest
import torch

from emolib.chat import build_prompt, continuation_ids
from emolib.steering import Steering, assert_no_hooks, steer_rows
from emolib.study.scoring import conditions_logprobs, hidden_states, sequence_logprobs


def _conditions(model, n=5):
    g = torch.Generator().manual_seed(1)
    width = model.config.hidden_size
    conds = [None]
    for k in range(n):
        layers = (1,) if k % 2 else (2, 3)  # conditions on different layers share one batch
        conds.append(Steering(vector=torch.randn(width, generator=g), layers=layers, strength=0.5 + k,
                              norms={i: 3.0 for i in range(4)}))
    return conds


def _setup(tok):
    cp = build_prompt(tok, "How are you today?", "I feel")
    span = (cp.spans["assistant"][0], len(cp.ids))
    words = ["good", "panicked", "calm", "sad"]
    conts = [continuation_ids(tok, cp, " " + w) for w in words]
    return cp, span, conts


def test_batched_conditions_equal_one_condition_at_a_time(tiny):
    model, tok = tiny
    cp, span, conts = _setup(tok)
    assert any(len(c) > 1 for c in conts) and any(len(c) == 1 for c in conts)  # both paths exercised
    conds = _conditions(model)
    got = conditions_logprobs(model, cp.ids, span, conds, conts, rows=4)  # chunks split mid-condition
    want = torch.stack([sequence_logprobs(model, tok, [cp.ids] * len(conts), conts, st, scopes=(span,))
                        for st in conds])
    assert got.shape == (len(conds), len(conts))
    assert torch.allclose(got, want, atol=1e-4)
    # the conditions really differ, so equality is not trivially true
    assert (got[1:] - got[0]).abs().max() > 1e-2
    assert_no_hooks(model)


def test_rows_size_and_order_do_not_change_results(tiny):
    model, tok = tiny
    cp, span, conts = _setup(tok)
    conds = _conditions(model)
    a = conditions_logprobs(model, cp.ids, span, conds, conts, rows=64)
    b = conditions_logprobs(model, cp.ids, span, conds[::-1], conts, rows=2)
    assert torch.allclose(a, b.flip(0), atol=1e-4)


def test_span_from_the_first_token_needs_no_prefix(tiny):
    model, tok = tiny
    cp, _, conts = _setup(tok)
    conds = _conditions(model, 2)
    got = conditions_logprobs(model, cp.ids, (0, len(cp.ids)), conds, conts)
    want = torch.stack([sequence_logprobs(model, tok, [cp.ids] * len(conts), conts, st, scopes=((0, len(cp.ids)),))
                        for st in conds])
    assert torch.allclose(got, want, atol=1e-4)


def test_bad_span_and_row_count_are_clear_errors(tiny):
    model, tok = tiny
    cp, _, conts = _setup(tok)
    with pytest.raises(ValueError, match="span"):
        conditions_logprobs(model, cp.ids, (3, len(cp.ids) + 1), [None], conts)
    ids = torch.tensor([cp.ids, cp.ids])
    with pytest.raises(ValueError, match="per-row"), steer_rows(model, _conditions(model, 2)):  # 3 rows, batch of 2
        hidden_states(model, ids, torch.ones_like(ids))
    assert_no_hooks(model)
