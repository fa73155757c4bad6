"""The autograder's checks: each takes the student's function and fails with a message that teaches.

A test cell of the assignment calls one check, e.g. ``checks.pool_mask_left_padding(pool_mask)``.
Every check compares against an answer worked out by hand on a tiny input (never against the
library function the exercise asks for, which the student could simply call), and recognises the
common wrong answers by name: "you counted the offset from the edge of the padded tensor" helps
where "assert failed" does not. ``tests/test_teaching.py`` runs every check on the library's own
solution (must pass) and on each planted mistake (must fail with its message).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
import torch


class ExerciseError(AssertionError):
    """A wrong answer; the message says what was expected and the likely cause."""


def _fail(exercise: int, msg: str) -> None:
    raise ExerciseError(f"Exercise {exercise}: {msg}")


def _show(mask: torch.Tensor) -> str:
    return "\n".join("    " + "".join("x" if v else "." for v in row) for row in mask.tolist())


def _as_tensor(x, exercise: int, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        _fail(exercise, f"{what} should return a torch.Tensor, got {type(x).__name__}.")
    return x


# ---- exercise 1: the pooling mask ------------------------------------------------------------------
def _mask_case(fn, mask: list[list[int]], start: int, expected: list[list[int]], label: str) -> None:
    m = torch.tensor(mask)
    got = _as_tensor(fn(m.clone(), start), 1, "pool_mask")
    if got.shape != m.shape:
        _fail(1, f"pool_mask returned shape {tuple(got.shape)}; it must have the attention mask's shape {tuple(m.shape)}.")
    got = got.bool()
    want = torch.tensor(expected).bool()
    if torch.equal(got, want):
        return
    msg = (f"{label}: wrong positions for start={start}.\nattention_mask:\n{_show(m)}\n"
           f"expected (x = averaged):\n{_show(want)}\nyours:\n{_show(got)}\n")
    from_edge = m.bool() & (torch.arange(m.shape[1]) >= start)
    if bool((got & ~m.bool()).any()):
        msg += "You average padding positions (attention_mask == 0): they hold no text and must never count."
    elif torch.equal(got, from_edge) and not torch.equal(from_edge, want):
        msg += ("You counted the offset from the left edge of the padded tensor. Under left padding a row's text "
                "starts later, so count positions from each row's first real token (hint: the cumulative sum of "
                "the attention mask is 1 at the first real token).")
    elif torch.equal(got, m.bool()):
        msg += "Every real token is marked: the first `start` tokens of each text must be left out."
    else:
        msg += "Position i of a row counts only if it is a real token and at least `start` real tokens precede it."
    _fail(1, msg)


def pool_mask_right_padding(fn: Callable) -> None:
    """Right padding (text first, then pads): the easy case."""
    _mask_case(fn, [[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0]], 2,
               [[0, 0, 1, 1, 1, 0, 0], [0, 0, 1, 0, 0, 0, 0]], "Right padding")


def pool_mask_left_padding(fn: Callable) -> None:
    """Left padding, as batched generation and most capture code use: the offset must move with the text."""
    _mask_case(fn, [[0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]], 2,
               [[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0, 1], [0, 0, 1, 1, 1, 1, 1]], "Left padding")


def pool_mask_short_texts(fn: Callable) -> None:
    """A text shorter than ``start`` has no pooled position (all False), and ``start=0`` keeps every real token."""
    _mask_case(fn, [[0, 0, 0, 1, 1], [1, 1, 1, 1, 1]], 3, [[0, 0, 0, 0, 0], [0, 0, 0, 1, 1]], "A text shorter than start")
    _mask_case(fn, [[0, 1, 1, 1, 1], [1, 1, 1, 0, 0]], 0, [[0, 1, 1, 1, 1], [1, 1, 1, 0, 0]], "start=0")


# ---- exercise 2: emotion vectors ----------------------------------------------------------------------
def _story_table() -> tuple[torch.Tensor, list[str]]:
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0], [float("nan"), 5.0], [0.0, 4.0], [10.0, -2.0], [2.0, 2.0]])
    return x, ["calm", "calm", "calm", "afraid", "afraid", "afraid"]


def emotion_means_basic(fn: Callable) -> None:
    """Per-emotion mean of story means, in the requested order, skipping stories that could not be pooled."""
    x, labels = _story_table()
    out = fn(x.clone(), labels, ["afraid", "calm"])
    if not (isinstance(out, tuple) and len(out) == 3):
        _fail(2, "emotion_means must return (means, names, counts).")
    means, names, counts = out
    means = _as_tensor(means, 2, "emotion_means")
    if list(names) != ["afraid", "calm"]:
        _fail(2, f"names should follow the `emotions` argument, ['afraid', 'calm']; got {list(names)}.")
    want = torch.tensor([[4.0, 4.0 / 3.0], [2.0, 1.0]])
    if torch.isnan(means).any():
        _fail(2, "Your means contain NaN: a story with NaN (too short to pool) must be skipped, not averaged.")
    if means.shape != want.shape or not torch.allclose(means.float(), want, atol=1e-5):
        hint = ""
        if means.shape == want.shape and torch.allclose(means[1].float(), torch.tensor([2.0, 7.0 / 3.0]), atol=1e-4):
            hint = (" You skipped NaN value by value (like nanmean): a story with any NaN could not be pooled and "
                    "must be dropped as a whole row.")
        _fail(2, f"expected means {want.tolist()} (rows afraid, calm), got {means.tolist()}.{hint} Average the story "
                 "rows of each emotion; a row with any NaN is left out.")
    if [int(c) for c in counts] != [3, 2]:
        _fail(2, f"counts should be the stories each mean used, [3, 2] (one calm story is NaN); got {list(counts)}.")


def emotion_means_missing(fn: Callable) -> None:
    """An emotion with no usable story is an error, not a silent NaN vector."""
    x, labels = _story_table()
    try:
        out = fn(x.clone(), labels, ["calm", "joyful"])
    except NotImplementedError:
        raise
    except ValueError:
        return
    except Exception as e:  # noqa: BLE001 - any other error type is the point of the message
        _fail(2, f"asking for an emotion with no story should raise ValueError, but raised {type(e).__name__}: {e}")
    _fail(2, "asking for 'joyful', which has no story, returned a result "
             f"({out[0].tolist() if isinstance(out, tuple) else out}); raise ValueError instead: a vector averaged "
             "over nothing is NaN and would poison every later figure.")


def grand_mean_center_check(fn: Callable) -> None:
    """Subtract the mean over emotions (axis ``dim``), each emotion weighted equally."""
    means = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [5.0, 8.0, 2.0]])
    out = fn(means.clone())
    if not (isinstance(out, tuple) and len(out) == 2):
        _fail(2, "grand_mean_center must return (centred, grand_mean).")
    c, g = (_as_tensor(t, 2, "grand_mean_center") for t in out)
    want_g = torch.tensor([3.0, 4.0, 2.0])
    if g.shape == (3,) and torch.allclose(g.float(), means.mean(dim=1), atol=1e-5):
        _fail(2, "You averaged over the width axis (each vector's own mean). The grand mean is the mean over "
                 "emotions: axis `dim` (0 here), one value per width component.")
    if g.shape != want_g.shape or not torch.allclose(g.float(), want_g, atol=1e-5):
        _fail(2, f"grand mean should be {want_g.tolist()}, got {g.tolist()}.")
    if not torch.allclose(c.float(), means - want_g, atol=1e-5):
        _fail(2, f"centred vectors should be means - grand mean = {(means - want_g).tolist()}, got {c.tolist()}.")
    x = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0))
    c3, _ = fn(x.clone(), dim=0)
    if c3.shape != x.shape or c3.sum(dim=0).abs().max() > 1e-4:
        _fail(2, "With means of shape [emotions, layers, width] and dim=0, the centred vectors must keep that shape "
                 "and sum to zero over emotions.")


# ---- exercise 3: denoising ----------------------------------------------------------------------------
def n_components_for_check(fn: Callable) -> None:
    """The smallest k whose top-k components explain at least the threshold."""
    r = [0.3, 0.2, 0.15, 0.1, 0.05]
    cases = [(0.5, 2, "0.3 + 0.2 reaches 0.5 exactly: 'at least' includes equality"),
             (0.31, 2, None), (0.2, 1, None), (0.0, 0, "threshold 0 means denoising is off: no component"),
             (0.9, 5, "the ratios sum to 0.8 < 0.9: return every component there is")]
    for threshold, want, why in cases:
        got = fn(torch.tensor(r, dtype=torch.float64), threshold)
        if not isinstance(got, (int, np.integer)) and not (isinstance(got, torch.Tensor) and got.numel() == 1):
            _fail(3, f"n_components_for should return an int, got {type(got).__name__}.")
        if int(got) != want:
            extra = f" ({why})" if why else ""
            if threshold == 0.5 and int(got) == 3:
                extra += ". You used '>' where the rule is '>='"
            _fail(3, f"for ratios {r} and threshold {threshold} the answer is {want}, yours is {int(got)}{extra}.")


def _basis(width: int = 8, k: int = 3, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(width, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.T.float().contiguous()  # [k, width], orthonormal rows


def project_out_check(fn: Callable) -> None:
    """The result is orthogonal to every basis row, and nothing outside the basis' span changes."""
    b = _basis()
    v = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    out = _as_tensor(fn(v.clone(), b.clone()), 3, "project_out")
    if out.shape != v.shape:
        _fail(3, f"project_out returned shape {tuple(out.shape)} for v of shape {tuple(v.shape)}; it must keep v's shape. "
                 "Remember the basis is [k, width]: one direction per row.")
    left = (out @ b.T).abs().max().item()
    if left > 1e-4:
        _fail(3, f"the result still has a component along the basis (largest |dot| = {left:.3g}). Subtract the "
                 "projection on all k directions: v - (v @ B.T) @ B.")
    removed = v - out
    in_span = removed - (removed @ b.T) @ b
    if in_span.abs().max().item() > 1e-4:
        _fail(3, "you changed v outside the span of the basis: only the part of v along the basis rows may go. "
                 "(Dividing by a norm, or removing a component along the *columns* of B, does this.)")
    one = _as_tensor(fn(v[0].clone(), b.clone()), 3, "project_out")
    if one.shape != v[0].shape or not torch.allclose(one, out[0], atol=1e-5):
        _fail(3, "a single vector of shape [width] must work too, and give the same answer as a row of a batch.")
    empty = _as_tensor(fn(v.clone(), torch.zeros(0, 8)), 3, "project_out")
    if not torch.allclose(empty, v, atol=1e-6):
        _fail(3, "with an empty basis (denoising off, k = 0) v must come back unchanged.")


# ---- exercise 4: cosine read-out ------------------------------------------------------------------------
def cosine_similarity_check(fn: Callable) -> None:
    """Cosines of each activation with each vector: shape, scale invariance, no NaN on zeros."""
    g = torch.Generator().manual_seed(2)
    acts = torch.randn(2, 3, 6, generator=g)
    vecs = torch.randn(4, 6, generator=g)
    out = _as_tensor(fn(acts.clone(), vecs.clone()), 4, "cosine_similarity")
    if out.shape != (2, 3, 4):
        _fail(4, f"activations [2, 3, width] against 4 vectors should give [2, 3, 4]; got {tuple(out.shape)}.")
    want = torch.nn.functional.cosine_similarity(acts.unsqueeze(-2), vecs, dim=-1)
    scaled = _as_tensor(fn(10 * acts, 3 * vecs), 4, "cosine_similarity")
    if not torch.allclose(scaled, out, atol=1e-5):
        _fail(4, "your scores change when the activations or the vectors are scaled: that is a dot product, not a "
                 "cosine. Divide by both norms (residual norms vary from token to token and grow with depth).")
    if not torch.allclose(out, want, atol=1e-5):
        _fail(4, "the values are not the cosines: cos(a, v) = a.v / (|a| |v|), for every activation and vector.")
    z = _as_tensor(fn(torch.zeros(1, 6), vecs), 4, "cosine_similarity")
    if torch.isnan(z).any():
        _fail(4, "a zero activation gave NaN: clamp the norms away from 0 (e.g. .clamp_min(1e-12)) so it gives 0.")


def header_readout_ranking(fn: Callable) -> None:
    """Cosine, not dot product, decides which emotion wins at a token."""
    vecs = torch.tensor([[10.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    act = torch.tensor([[2.0, 3.0, 0.0]])
    out = _as_tensor(fn(act, vecs), 4, "cosine_similarity")
    if int(out[0].argmax()) != 1:
        _fail(4, "an activation pointing mostly along vector 1 was read as vector 0, the longer vector. The read-out "
                 "must not reward a vector for its length.")


# ---- exercise 5: steering hook --------------------------------------------------------------------------
def _hook_count(module) -> int:
    return len(module._forward_hooks) + len(module._forward_pre_hooks)


def _tiny():
    from emolib.models import tiny_model

    model, tok = tiny_model(n_layers=3, width=32)
    ids = torch.tensor([tok("The kettle boiled and she poured the tea.")["input_ids"]])
    return model, ids


def _block_out(model, layer: int, ids: torch.Tensor) -> torch.Tensor:
    from emolib.capture import record_residual

    with record_residual(model, [layer]) as rec, torch.inference_mode():
        model(input_ids=ids)
    return rec[layer][0][0].float()


def add_vector_adds(fn: Callable) -> None:
    """Inside the ``with``, block ``layer``'s output is shifted by exactly ``delta`` at every position."""
    from emolib.models import find_layers

    model, ids = _tiny()
    layer = 1
    delta = torch.linspace(-1, 1, 32)
    base = _block_out(model, layer, ids)
    cm = fn(model, layer, delta)
    if not isinstance(cm, AbstractContextManager) and not hasattr(cm, "__enter__"):
        _fail(5, f"add_vector(...) should return a context manager (use @contextmanager and `yield`); got "
                 f"{type(cm).__name__}.")
    with cm:
        steered = _block_out(model, layer, ids)
        nxt = _block_out(model, layer + 1, ids)
    diff = steered - base
    if torch.allclose(diff, torch.zeros_like(diff), atol=1e-6):
        _fail(5, "inside the `with`, block 1's output did not change. Register a forward hook on the block that "
                 "returns the modified output (a hook that only modifies a local copy changes nothing).")
    if not torch.allclose(diff, delta.expand_as(diff), atol=1e-5):
        _fail(5, f"block 1's output should move by exactly delta at every position; the largest error is "
                 f"{(diff - delta).abs().max().item():.3g}. Add delta once, at every position, and don't rescale it.")
    if torch.allclose(nxt, _block_out(model, layer + 1, ids), atol=1e-6):
        _fail(5, "the change did not reach the next block: the hook must *return* the new output.")
    if _hook_count(find_layers(model)[layer]):
        _fail(5, "a hook is still on the block after the `with` ended: remove its handle when the block exits.")
    if not torch.allclose(_block_out(model, layer, ids), base, atol=1e-6):
        _fail(5, "after the `with`, the model is still steered.")


def add_vector_cleans_up(fn: Callable) -> None:
    """An exception inside the ``with`` must not leave the hook behind."""
    from emolib.models import find_layers

    model, ids = _tiny()
    block = find_layers(model)[0]
    before = _hook_count(block)

    class Boom(Exception):
        pass

    try:
        with fn(model, 0, torch.ones(32)):
            raise Boom
    except Boom:
        pass
    if _hook_count(block) != before:
        _fail(5, "after an exception inside `with add_vector(...)`, the hook was still attached: the next cell "
                 "would run a steered model without knowing it. Remove the handle in a `finally:` block.")
    with fn(model, 0, torch.zeros(32)):
        zero = _block_out(model, 0, ids)
    if not torch.allclose(zero, _block_out(model, 0, ids), atol=1e-6):
        _fail(5, "delta = 0 must leave the model's output unchanged.")


# ---- exercise 6: preferences and Elo ---------------------------------------------------------------------
def option_probs_check(fn: Callable) -> None:
    """Renormalise the two option log-probs; report the mass on them."""
    lp = torch.log(torch.tensor([[0.3, 0.1], [0.02, 0.06], [0.5, 0.5]]))
    out = fn(lp.clone())
    if not (isinstance(out, tuple) and len(out) == 2):
        _fail(6, "option_probs must return (probabilities [n, 2], mass [n]).")
    p, mass = (_as_tensor(t, 6, "option_probs") for t in out)
    if p.shape != lp.shape:
        _fail(6, f"probabilities should have shape {tuple(lp.shape)}, got {tuple(p.shape)}.")
    if not torch.allclose(p.sum(-1), torch.ones(3), atol=1e-5):
        if torch.allclose(p.sum(0), torch.ones(2), atol=1e-5):
            _fail(6, "your probabilities sum to 1 down each column: normalise over the options (the last axis), "
                     "not over the prompts.")
        _fail(6, "each row's probabilities must sum to 1: renormalise over the two options (a softmax of the "
                 "log-probs), since the model also puts mass on other tokens.")
    if not torch.allclose(p[:, 0], torch.tensor([0.75, 0.25, 0.5]), atol=1e-5):
        _fail(6, f"P(A) should be [0.75, 0.25, 0.5], got {p[:, 0].tolist()}.")
    if not torch.allclose(mass, torch.tensor([0.4, 0.08, 1.0]), atol=1e-5):
        _fail(6, f"the mass on the options should be [0.4, 0.08, 1.0] (sum of the two probabilities before "
                 f"renormalising), got {mass.tolist()}.")


def _bt_data(bias: float = 0.4):
    true = np.array([1.2, 0.5, 0.0, -0.4, -1.3])
    first, second = [], []
    for i in range(5):
        for j in range(5):
            if i != j:
                first.append(i)
                second.append(j)
    f, g = np.array(first), np.array(second)
    p = 1.0 / (1.0 + np.exp(-(true[f] - true[g] + bias)))
    return true, f, g, p


def bradley_terry_recovers(fn: Callable) -> None:
    """Soft outcomes made from known scores give those scores back (centred), in the right order."""
    true, f, g, p = _bt_data()
    fit = fn(f, g, p, 5, position_bias=True, l2=1e-6)
    s = np.asarray(getattr(fit, "scores", fit), dtype=float)
    if s.shape != (5,):
        _fail(6, f"expected 5 scores, got shape {s.shape}.")
    if np.any(~np.isfinite(s)):
        _fail(6, "some scores are not finite: check the loss (softplus(z) - p z is stable; log(sigmoid) of a large "
                 "negative z is not).")
    r = float(np.corrcoef(s, true)[0, 1])
    if r < 0:
        _fail(6, f"your scores run backwards (correlation {r:.2f} with the truth): the item chosen more often must "
                 "score higher. Check the sign of z = s[first] - s[second] + bias and of the gradient.")
    err = float(np.abs(s - (true - true.mean())).max())
    if err > 0.02:
        _fail(6, f"the scores should match the true ones {np.round(true - true.mean(), 2).tolist()} (centred) within "
                 f"0.02; yours {np.round(s, 2).tolist()}. If the optimiser stopped early, the gradient is wrong: "
                 "d loss / d z = sigmoid(z) - p, added to s[first], subtracted from s[second].")


def bradley_terry_bias(fn: Callable) -> None:
    """The position bias is fitted jointly: the model's taste for option (A) is not an item's score."""
    true, f, g, p = _bt_data(bias=0.4)
    fit = fn(f, g, p, 5, position_bias=True, l2=1e-6)
    b = getattr(fit, "bias", None)
    if b is None or not math.isfinite(float(b)) or abs(float(b) - 0.4) > 0.02:
        _fail(6, f"the fitted position bias should be 0.40, got {b}. Its gradient is the sum of "
                 "(sigmoid(z) - p) over all comparisons.")
