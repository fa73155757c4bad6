"""Adding emotion directions to the residual stream, the paper's way.

At block ``L`` the hook adds ``strength * norm[L] * v / ||v||`` to the block's output, where
``norm[L]`` is the mean residual-stream norm at that layer (:func:`mean_residual_norms`), so a
strength is a fraction of a typical activation's size, as in the paper's steering experiments.

The hooks live only inside a ``with steer(...)`` block and are removed in ``finally``: re-running a
notebook cell cannot stack a second copy, and an exception leaves the model clean. Token scopes:

* ``"all"``: every position;
* ``"prompt"``: positions of the input given to the first forward call (the prompt of ``generate``);
* ``"response"``: positions after the prompt (tokens produced by ``generate``);
* an ``int`` ``k``: positions ``>= k``, counted from each row's first real token (padding-aware);
* a ``(start, stop)`` tuple: positions in ``[start, stop)``, counted the same way.

Positions are tracked by a pre-hook on the base model that reads the attention mask and the KV
cache length, so scopes stay right during cached generation with left padding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import Union

import torch

from emolib.capture import PerDevice, _block_output, _resolve_layers, pooled_means, tag
from emolib.models import base_model, find_layers

Scope = Union[str, int, tuple]


def unit(v: torch.Tensor) -> torch.Tensor:
    """``v / ||v||`` in float32; a zero vector is an error, not a silent NaN."""
    v = v.detach().float()
    n = v.norm()
    if not torch.isfinite(n) or n == 0:
        raise ValueError("Cannot steer with a zero (or non-finite) vector.")
    return v / n


class _PositionTracker:
    """Knows, at each forward call, where each row's tokens sit in its sequence."""

    def __init__(self) -> None:
        self.prompt_len: int | None = None
        self.past = 0
        self.seq = 0
        self.pad: torch.Tensor | None = None  # leading pad tokens per row (left padding)

    def pre_hook(self, _module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        x = ids if ids is not None else embeds
        self.seq = int(x.shape[1])
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = 0
        if cache is not None and hasattr(cache, "get_seq_length"):
            past = int(cache.get_seq_length())
        self.past = past
        if past == 0:
            self.prompt_len = self.seq
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            self.pad = (mask.long().cumsum(-1) == 0).sum(-1)
        else:
            self.pad = None

    def scope_mask(self, scope: Scope, batch: int, device) -> torch.Tensor | None:
        """``[batch, seq, 1]`` float mask of the positions to steer, or None for all."""
        if scope == "all":
            return None
        absolute = torch.arange(self.past, self.past + self.seq, device=device).unsqueeze(0).expand(batch, -1)
        prompt_len = self.prompt_len if self.prompt_len is not None else self.seq
        if scope == "prompt":
            m = absolute < prompt_len
        elif scope == "response":
            m = absolute >= prompt_len
        else:
            pad = self.pad.to(device).view(-1, 1) if self.pad is not None else 0
            rel = absolute - pad
            if isinstance(scope, int):
                m = rel >= scope
            elif isinstance(scope, tuple) and len(scope) == 2:
                lo, hi = scope
                m = (rel >= lo) & (rel < (hi if hi is not None else 1 << 62))
            else:
                raise ValueError(f"Unknown steering scope {scope!r}: use 'all', 'prompt', 'response', an int or (start, stop).")
        return m.unsqueeze(-1).float()


def _as_layer_map(vector, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    if isinstance(vector, Mapping):
        missing = [layer for layer in layers if layer not in vector]
        if missing:
            raise ValueError(f"No vector given for layer(s) {missing}.")
        return {layer: vector[layer] for layer in layers}
    v = torch.as_tensor(vector)
    if v.dim() == 2:
        if v.shape[0] != len(layers):
            raise ValueError(f"Got {v.shape[0]} vectors for {len(layers)} layers.")
        return {layer: v[k] for k, layer in enumerate(layers)}
    return {layer: v for layer in layers}


def finite(name: str, value) -> float:
    """``float(value)``, or a ValueError naming ``name`` if it is NaN or infinite (a NaN strength
    would silently turn every logit into NaN)."""
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number, got {x}.")
    return x


def _norm_at(norms, layer: int) -> float:
    """The residual norm of ``layer`` from a dict, a sequence indexed by layer, one float, or None (1)."""
    if norms is None:
        return 1.0
    if isinstance(norms, Mapping):
        if layer not in norms:
            raise ValueError(f"norms has no entry for layer {layer} (it has layers {sorted(norms)}).")
        scale = norms[layer]
    elif isinstance(norms, (int, float)):
        scale = norms
    else:
        t = torch.as_tensor(norms).reshape(-1)
        if not 0 <= layer < t.numel():
            raise ValueError(f"norms has {t.numel()} entries, indexed by layer number; layer {layer} is missing.")
        scale = t[layer]
    scale = finite(f"the residual norm at layer {layer}", scale)
    if scale <= 0:
        raise ValueError(f"The residual norm at layer {layer} must be positive, got {scale}.")
    return scale


def layer_deltas(model, vector, layers: Sequence[int] | int, strength: float,
                 norms: Mapping[int, float] | Sequence[float] | torch.Tensor | float | None = None) -> dict[int, torch.Tensor]:
    """``layer -> strength * norm[L] * unit(vector[L])`` (float32 ``[width]``): what :func:`steer` adds."""
    idx = _resolve_layers(model, layers)
    vecs = _as_layer_map(vector, idx)
    width = int(model.config.hidden_size)
    strength = finite("strength", strength)
    deltas: dict[int, torch.Tensor] = {}
    for layer in idx:
        v = vecs[layer]
        if v.shape[-1] != width:
            raise ValueError(f"Steering vector has width {v.shape[-1]} but the model's residual stream has width {width}.")
        deltas[layer] = strength * _norm_at(norms, layer) * unit(v)
    return deltas


@contextmanager
def _added(model, deltas: Mapping[int, torch.Tensor], scope: Scope) -> Iterator[None]:
    """Hooks adding ``deltas[L]`` to block ``L``'s output on the positions of ``scope``: a ``[width]``
    delta goes to every row, a ``[rows, width]`` delta row by row (one condition per batch row)."""
    blocks = find_layers(model)
    tracker = _PositionTracker()
    placed = {layer: PerDevice(d) for layer, d in deltas.items()}  # moved to each block's device once

    def make_hook(layer: int):
        def hook(_module, _args, output):
            h = _block_output(output)
            d = placed[layer].like(h)
            if d.dim() == 2:
                if d.shape[0] != h.shape[0]:
                    raise ValueError(f"{d.shape[0]} per-row steering deltas for a batch of {h.shape[0]} rows.")
                d = d.unsqueeze(1)
            m = tracker.scope_mask(scope, h.shape[0], h.device)
            new = h + d if m is None else h + m.to(h.dtype) * d
            if isinstance(output, tuple):
                return (new,) + tuple(output[1:])
            return new
        return hook

    def pre_hook(module, args, kwargs):
        tracker.pre_hook(module, args, kwargs)

    handles = []
    try:
        handles.append(base_model(model).register_forward_pre_hook(tag(pre_hook), with_kwargs=True))
        for layer in deltas:
            handles.append(blocks[layer].register_forward_hook(tag(make_hook(layer))))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def steer(model, vector, layers: Sequence[int] | int, strength: float,
          norms: Mapping[int, float] | Sequence[float] | torch.Tensor | float | None = None,
          scope: Scope = "all") -> Iterator[dict]:
    """Add ``strength * norm[L] * unit(vector)`` to the output of each block ``L`` in ``layers``.

    ``vector`` is one ``[width]`` direction for all layers, a ``[len(layers), width]`` tensor, or
    a dict ``layer -> [width]``. ``norms`` gives the mean residual norm per layer: a dict, a
    sequence/tensor indexed by layer number, or one float; ``None`` means 1 (``strength`` then is
    in raw activation units). Yields a small dict with the per-layer deltas, for inspection.
    """
    deltas = layer_deltas(model, vector, layers, strength, norms)
    with _added(model, deltas, scope):
        yield {"deltas": deltas, "layers": list(deltas), "scope": scope}


@dataclass(frozen=True)
class Steering:
    """One intervention as a value: a direction (one ``[width]`` vector for every layer, or
    ``layer -> [width]``) added at ``layers`` with ``strength`` in units of the mean residual norm
    (``norms``: ``layer -> norm``). Built by :meth:`emolib.vectors.EmotionVectors.steering`;
    experiments pass it around and apply it where they need it, so one object names one condition.
    """

    vector: torch.Tensor | Mapping[int, torch.Tensor]
    layers: tuple[int, ...]
    strength: float
    norms: Mapping[int, float]
    label: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        object.__setattr__(self, "strength", finite("strength", self.strength))

    def scaled(self, strength: float) -> Steering:
        """The same direction at another strength."""
        return replace(self, strength=float(strength))

    @contextmanager
    def apply(self, model, scopes: Sequence[Scope] = ("all",)) -> Iterator[None]:
        """Steer ``model`` inside the block, once on each scope in ``scopes`` (disjoint spans each
        get the vector once); the hooks are gone when the block ends, also after an exception."""
        with ExitStack() as stack:
            for scope in scopes:
                stack.enter_context(steer(model, self.vector, list(self.layers), self.strength, norms=self.norms,
                                          scope=scope))
            yield

    def deltas(self, model) -> dict[int, torch.Tensor]:
        """``layer -> [width]`` float32 vectors this condition adds (see :func:`layer_deltas`)."""
        return layer_deltas(model, self.vector, list(self.layers), self.strength, self.norms)


@contextmanager
def steer_rows(model, steerings: Sequence[Steering | None], scope: Scope = "all") -> Iterator[None]:
    """Row ``i`` of every batch inside the block is steered by ``steerings[i]`` (None: not steered).

    Many conditions in one forward pass: a sweep over 171 emotions and their controls costs a few
    large batches instead of hundreds of small ones. Conditions may use different layers; a row
    gets zeros at the layers its condition does not touch. ``scope`` is shared by all rows.
    """
    per = [s.deltas(model) if s is not None else {} for s in steerings]
    layers = sorted({layer for d in per for layer in d})
    width = int(model.config.hidden_size)
    stacked = {}
    for layer in layers:
        rows = torch.zeros(len(per), width)
        for i, d in enumerate(per):
            if layer in d:
                rows[i] = d[layer]
        stacked[layer] = rows
    with _added(model, stacked, scope):
        yield


def apply_steering(model, steering: Steering | None, scopes: Sequence[Scope] = ("all",)):
    """``steering.apply(model, scopes)``, or no intervention when ``steering`` is None (baselines
    go through the same code as steered conditions)."""
    return nullcontext() if steering is None else steering.apply(model, scopes)


@contextmanager
def add_vector(model, layer: int, delta: torch.Tensor) -> Iterator[None]:
    """Add ``delta [width]`` to the output of block ``layer`` at every position, inside a ``with``.

    The smallest steering intervention, and the one to read first: :func:`steer` builds on the same
    idea with norms, token scopes and several layers. A decoder block returns either a tensor or a
    tuple whose first item is the hidden state; the hook must return the same shape of thing. The
    hook is removed in ``finally``, so an exception inside the ``with`` (or a Ctrl-C in a notebook)
    never leaves the model steered for the next cell.
    """
    block = find_layers(model)[layer]
    ### BEGIN SOLUTION
    def hook(_module, _args, output):
        h = output[0] if isinstance(output, tuple) else output
        new = h + delta.to(device=h.device, dtype=h.dtype)
        return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

    handle = block.register_forward_hook(tag(hook))  # tagged: assert_no_hooks sees it
    try:
        yield
    finally:
        handle.remove()
    ### END SOLUTION


def mean_residual_norms(model, tokenizer, texts: Sequence[str], layers: Sequence[int] | int | None = None,
                        batch_size: int = 8, max_length: int = 512) -> torch.Tensor:
    """Mean L2 norm of the block output at each requested layer, over all real tokens but the first.

    The first token of a text is the attention sink: its norm can be many times larger than any
    other and would inflate every strength. Returns a float32 tensor aligned with ``layers``.
    """
    pooled = pooled_means(model, tokenizer, texts, layers=layers, start=0, batch_size=batch_size,
                          max_length=max_length)
    return pooled.residual_norms


def active_hooks(model) -> int:
    """Number of emolib hooks currently on the decoder blocks and the base model (0 when clean)."""
    mods = list(find_layers(model)) + [base_model(model)]
    hooks = [h for m in mods for h in list(m._forward_hooks.values()) + list(m._forward_pre_hooks.values())]
    return sum(1 for h in hooks if getattr(h, "_emolib_hook", False))


def assert_no_hooks(model) -> None:
    """Notebooks call this at the top: a leftover hook from an interrupted cell would bias everything."""
    n = active_hooks(model)
    if n:
        raise RuntimeError(f"{n} forward hook(s) are still attached to the model; reload it before going on.")
