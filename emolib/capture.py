"""Reading the residual stream.

"The residual stream at block L" is, everywhere in emolib, the output of decoder block ``L``
(0-based), read by a forward hook on that block. It is *not* read from ``output_hidden_states``:
in transformers 5 the last entry of that tuple is taken after the final norm, so it differs from
the last block's output. Steering (:mod:`emolib.steering`) writes to the same place, so what is
read and what is steered are the same vector space.

Two ways in:

* :func:`record_residual`, a context manager that keeps per-token activations (for monitoring,
  token heatmaps, short prompts);
* :func:`pooled_means`, which streams many texts through the model and keeps only, per text and
  layer, the mean over token positions ``>= start`` (counted from each text's first real token,
  whatever the padding side) -- memory does not grow with the number of tokens.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from emolib.models import base_model, find_layers, model_device


def tag(fn):
    """Mark a hook as emolib's, so :func:`emolib.steering.active_hooks` can count ours only
    (transformers 5 attaches hooks of its own when ``output_hidden_states`` is used)."""
    fn._emolib_hook = True
    return fn


class _StopForward(Exception):
    """Raised by the hook on the deepest requested block: later blocks need not run."""


def _block_output(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


class PerDevice:
    """One tensor, copied at most once to each (device, dtype) a hook asks for.

    On a model sharded over several GPUs (``device_map="auto"``) the blocks sit on different
    devices, so a hook must use its block's device; converting a vector there on every forward
    call would cost a copy per call and per token, so the copies are kept.
    """

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        self.copies: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {(tensor.device, tensor.dtype): tensor}

    def like(self, other: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor on ``other``'s device, in ``dtype`` (default: ``other``'s dtype)."""
        key = (other.device, dtype or other.dtype)
        if key not in self.copies:
            self.copies[key] = self.tensor.to(device=key[0], dtype=key[1])
        return self.copies[key]


def _resolve_layers(model, layers: Sequence[int] | int | None) -> list[int]:
    """Block indices (negative ones counted from the end); ``model`` may be a model or its block count."""
    n = model if isinstance(model, int) else len(find_layers(model))
    if layers is None:
        return list(range(n))
    if isinstance(layers, int):
        layers = [layers]
    if len(layers) == 0:
        raise ValueError("layers is empty: give at least one block index (or None for all blocks).")
    out = []
    for layer in layers:
        idx = layer + n if layer < 0 else layer
        if not 0 <= idx < n:
            raise ValueError(f"Layer {layer} is out of range: the model has {n} blocks (0..{n - 1}).")
        out.append(int(idx))
    return out


@contextmanager
def record_residual(model, layers: Sequence[int] | int | None = None,
                    detach: bool = True) -> Iterator[dict[int, list[torch.Tensor]]]:
    """Record block outputs at ``layers`` for every forward pass inside the block.

    Yields a dict ``layer -> list of tensors``, one ``[batch, seq, width]`` float32 tensor per
    forward call (so a ``generate`` call yields the prompt pass followed by one entry per new
    token). Hooks are removed on exit, also after an exception.
    """
    blocks = find_layers(model)
    idx = _resolve_layers(model, layers)
    store: dict[int, list[torch.Tensor]] = {i: [] for i in idx}
    handles = []

    def make_hook(i: int):
        def hook(_module, _args, output):
            h = _block_output(output)
            store[i].append((h.detach() if detach else h).float())
        return hook

    try:
        for i in idx:
            handles.append(blocks[i].register_forward_hook(tag(make_hook(i))))
        yield store
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class PooledActivations:
    """Mean residual activation per text and layer, plus the bookkeeping a user needs to trust it.

    ``means`` is ``[n_texts, n_layers, width]`` float32 in the input order; rows of texts that were
    too short are NaN and listed in ``short_ids``. ``residual_norms`` is the mean L2 norm of the
    block output per layer over every real token except each text's first (the attention-sink
    position), the scale steering strengths are expressed in.
    """

    means: torch.Tensor
    layers: list[int]
    n_tokens: torch.Tensor  # tokens pooled per text
    short_ids: list = field(default_factory=list)
    residual_norms: torch.Tensor | None = None
    start: int = 50
    seconds: float = 0.0
    total_tokens: int = 0
    n_truncated: int = 0  # texts longer than max_length (cut to it)
    longest: int = 0  # tokens in the longest text before cutting

    @property
    def ok(self) -> torch.Tensor:
        """Boolean mask of texts that were long enough to pool."""
        return self.n_tokens > 0


def pad_id_of(tokenizer) -> int:
    """The id used for padding: the tokenizer's pad token, else its EOS, else 0."""
    pid = tokenizer.pad_token_id
    if pid is None:
        pid = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    return int(pid)


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` for token-id lists padded on ``side`` ("left" or "right")."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for j, s in enumerate(seqs):
        if not s:
            continue
        span = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[j, span] = torch.as_tensor(list(s), dtype=torch.long)
        mask[j, span] = 1
    return ids, mask


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left padding, what batched generation and last-token read-outs need."""
    return pad_batch(seqs, pad_id, "left")


def pool_mask(attention_mask: torch.Tensor, start: int) -> torch.Tensor:
    """Which positions the pooled mean averages: real tokens at index ``>= start`` of their own text.

    ``attention_mask`` is ``[batch, seq]`` (1 = real token, 0 = padding, on either side). The
    offset is counted from each row's first real token, never from the edge of the padded tensor:
    under left padding the two differ by the row's padding length. A row with no token at or past
    ``start`` is all False (the caller reports it as too short). Returns a bool ``[batch, seq]``.
    """
    ### BEGIN SOLUTION
    real = attention_mask.bool()
    position = attention_mask.long().cumsum(dim=-1) - 1  # 0 at each row's first real token
    return real & (position >= start)
    ### END SOLUTION


def encode_texts(tokenizer, texts: Sequence[str], max_length: int | None, add_special_tokens: bool = True,
                 what: str = "encoding", warn: bool = True) -> list[list[int]]:
    """Token ids of each text, cut to ``max_length`` with a warning that says how many were cut.

    Silent truncation hid that a long transcript was only partly read; now the caller is told (or,
    with ``warn=False``, can count the cut texts itself: :func:`n_truncated`).
    """
    enc = [list(tokenizer(t, add_special_tokens=add_special_tokens)["input_ids"]) for t in texts]
    if max_length is not None:
        long = [len(e) for e in enc if len(e) > max_length]
        if long and warn:
            truncation_warning(what, len(long), len(enc), max_length, max(long), stacklevel=3)
        enc = [e[:max_length] for e in enc]
    return enc


def truncation_warning(what: str, n_cut: int, n: int, max_length: int, longest: int, stacklevel: int = 2) -> None:
    warnings.warn(f"{what}: {n_cut} of {n} text(s) are longer than max_length={max_length} tokens (longest "
                  f"{longest}) and were cut to their first {max_length} tokens.", stacklevel=stacklevel + 1)


@contextmanager
def _hooked_passes(model, idx: Sequence[int], make_hook):
    """Forward hooks ``make_hook(layer)`` on the blocks ``idx`` (tagged), removed on exit even after an
    exception; yields ``forward(input_ids, attention_mask)``, which runs the model without its LM head and
    ends where a hook raises :class:`_StopForward` (the pooling hooks do so at the deepest block). The one
    scaffold behind :func:`pooled_means` and :func:`masked_means`."""
    blocks = find_layers(model)
    dev = model_device(model)
    core = base_model(model)
    handles = [blocks[layer].register_forward_hook(tag(make_hook(layer))) for layer in idx]

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        try:
            core(input_ids=input_ids.to(dev), attention_mask=attention_mask.to(dev), use_cache=False)
        except _StopForward:
            pass

    try:
        with torch.inference_mode():
            yield forward
    finally:
        for handle in handles:
            handle.remove()


def pooled_means(model, tokenizer, texts: Sequence[str], layers: Sequence[int] | int | None = None,
                 start: int = 50, batch_size: int = 8, max_length: int | None = 1024,
                 ids: Sequence | None = None, add_special_tokens: bool = True,
                 progress: bool = False, desc: str = "pooling", warn: bool = True) -> PooledActivations:
    """Mean block-output activation over positions ``>= start`` of each text, at each layer.

    Texts are sorted by length into batches (less padding), run without the LM head, and pooled on
    the fly in float32: per-token activations are never stored. The deepest requested block stops
    the forward pass early. Texts with no token at or past ``start`` are reported in
    ``short_ids`` (their ``ids`` if given, else their indices), never averaged over nothing.
    Works for left or right padding and any batch size; tests check batched == unbatched.
    """
    if not texts:
        raise ValueError("pooled_means needs at least one text.")
    if ids is not None and len(ids) != len(texts):
        raise ValueError(f"{len(ids)} ids for {len(texts)} texts.")
    idx = _resolve_layers(model, layers)
    dev = model_device(model)
    width = int(model.config.hidden_size)
    full = [len(tokenizer(t, add_special_tokens=add_special_tokens)["input_ids"]) for t in texts] if max_length else []
    enc = encode_texts(tokenizer, texts, max_length, add_special_tokens=add_special_tokens, what="pooled_means",
                       warn=warn)
    order = sorted(range(len(texts)), key=lambda i: len(enc[i]))
    sums = torch.zeros(len(texts), len(idx), width, dtype=torch.float64)
    counts = torch.zeros(len(texts), dtype=torch.long)
    norm_sum = torch.zeros(len(idx), dtype=torch.float64)
    norm_count = 0
    state: dict = {}
    slot = {layer: k for k, layer in enumerate(idx)}
    deepest = max(idx)

    def make_hook(layer: int):
        def hook(_module, _args, output):
            h = _block_output(output)
            if h.dtype != torch.float32:
                h = h.float()
            # [B, 1, T] @ [B, T, D]: the masked sum as one batched matmul, no [B, T, D] temporary
            sums[state["rows"], slot[layer]] += torch.bmm(state["pool_mask"].like(h), h)[:, 0].double().cpu()
            norms = torch.linalg.vector_norm(h, dim=-1)
            norm_sum[slot[layer]] += (norms * state["norm_mask"].like(norms)).sum().double().cpu()
            if layer == deepest:
                raise _StopForward
        return hook

    pad_id = pad_id_of(tokenizer)
    side = getattr(tokenizer, "padding_side", "right")
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    bar = _progress(len(texts), desc) if progress else None
    t0 = time.perf_counter()
    total = 0
    try:
        with _hooked_passes(model, idx, make_hook) as forward:
            for rows in batches:
                rows = [r for r in rows if enc[r]]  # an empty text has no token to pool: reported as short
                if not rows:
                    continue
                ids_t, mask = pad_batch([enc[r] for r in rows], pad_id, side)
                pool = pool_mask(mask, start).to(dev)
                norm = pool_mask(mask, 1)  # residual norms skip each text's first token
                state["rows"] = torch.tensor(rows)
                # masks follow each hook to its block's device (a sharded model has several)
                state["pool_mask"] = PerDevice(pool.unsqueeze(1).float())
                state["norm_mask"] = PerDevice(norm.float().to(dev))
                counts[rows] = pool.sum(dim=1).cpu()
                norm_count += int(norm.sum())
                total += int(mask.sum())
                forward(ids_t, mask)
                if bar is not None:
                    bar.update(len(rows))
                    bar.set_postfix(tok_s=f"{total / max(time.perf_counter() - t0, 1e-9):.0f}")
    finally:
        if bar is not None:
            bar.close()
    means = (sums / counts.clamp(min=1).view(-1, 1, 1).double()).float()
    short = [int(i) for i in torch.nonzero(counts == 0).flatten()]
    means[short] = math.nan
    names = list(ids) if ids is not None else list(range(len(texts)))
    return PooledActivations(
        means=means, layers=idx, n_tokens=counts, short_ids=[names[i] for i in short],
        residual_norms=(norm_sum / max(norm_count, 1)).float(), start=start,
        seconds=time.perf_counter() - t0, total_tokens=total,
        n_truncated=sum(n > max_length for n in full) if max_length else 0, longest=max(full, default=0),
    )


def masked_means(model, tokenizer, ids: Sequence[Sequence[int]], masks: Sequence[torch.Tensor],
                 layers: Sequence[int] | int | None = None, batch_size: int = 8, progress: bool = False,
                 desc: str = "pooling") -> tuple[torch.Tensor, torch.Tensor]:
    """Mean block output over several token groups of each sequence: ``(means [n, groups, layers, width], counts [n, groups])``.

    ``masks[i]`` is a bool ``[groups, len(ids[i])]`` saying which tokens of sequence ``i`` each group
    averages (for example the Human-turn and the Assistant-turn tokens of one dialogue, or a named
    character's lines). One forward pass per batch serves every group; nothing per token is kept.
    A group with no token is NaN. Sequences are batched by length and right-padded; batched equals
    unbatched (tests check it).
    """
    if len(ids) != len(masks):
        raise ValueError(f"{len(ids)} sequences but {len(masks)} masks.")
    if not ids:
        raise ValueError("masked_means needs at least one sequence.")
    n_groups = int(masks[0].shape[0])
    for i, (s, m) in enumerate(zip(ids, masks)):
        if tuple(m.shape) != (n_groups, len(s)):
            raise ValueError(f"mask {i} has shape {tuple(m.shape)}, expected ({n_groups}, {len(s)}).")
    idx = _resolve_layers(model, layers)
    dev = model_device(model)
    width = int(model.config.hidden_size)
    sums = torch.zeros(len(ids), n_groups, len(idx), width, dtype=torch.float64)
    counts = torch.stack([m.sum(1) for m in masks]).long()
    slot = {layer: k for k, layer in enumerate(idx)}
    deepest = max(idx)
    state: dict = {}

    def make_hook(layer: int):
        def hook(_module, _args, output):
            h = _block_output(output).float()
            sums[state["rows"], :, slot[layer]] += torch.bmm(state["mask"].like(h), h).double().cpu()
            if layer == deepest:
                raise _StopForward
        return hook

    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    pad_id = pad_id_of(tokenizer)
    bar = _progress(len(ids), desc) if progress else None
    try:
        with _hooked_passes(model, idx, make_hook) as forward:
            for b in range(0, len(order), batch_size):
                rows = [r for r in order[b:b + batch_size] if len(ids[r])]
                if not rows:
                    continue
                ids_t, attn = pad_batch([ids[r] for r in rows], pad_id, "right")
                m = torch.zeros(len(rows), n_groups, ids_t.shape[1])
                for j, r in enumerate(rows):
                    m[j, :, :len(ids[r])] = masks[r].float()
                state["rows"] = torch.tensor(rows)
                state["mask"] = PerDevice(m.to(dev))
                forward(ids_t, attn)
                if bar is not None:
                    bar.update(len(rows))
    finally:
        if bar is not None:
            bar.close()
    means = (sums / counts.clamp(min=1)[:, :, None, None].double()).float()
    means[counts == 0] = math.nan
    return means, counts


def token_activations(model, tokenizer, text: str | None = None, layers: Sequence[int] | int | None = None,
                      input_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, list[int]]:
    """Per-token block outputs for one text: ``([n_tokens, n_layers, width] float32, token ids)``."""
    idx = _resolve_layers(model, layers)
    if input_ids is None:
        if text is None:
            raise ValueError("Give a text or input_ids.")
        input_ids = tokenizer(text, return_tensors="pt")["input_ids"]
    input_ids = torch.as_tensor(input_ids).reshape(1, -1)
    if input_ids.shape[1] == 0:
        raise ValueError("token_activations got an empty text: there is no token to read.")
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and input_ids.shape[1] > limit:
        warnings.warn(f"token_activations: the input has {input_ids.shape[1]} tokens but the model has {limit} "
                      f"positions; only the first {limit} are read.", stacklevel=2)
        input_ids = input_ids[:, :limit]
    input_ids = input_ids.to(model_device(model))
    with torch.inference_mode(), record_residual(model, idx) as rec:
        run_until(model, idx, input_ids=input_ids)
    acts = torch.stack([rec[layer][0][0] for layer in idx], dim=1).cpu()
    return acts, input_ids[0].tolist()


def run_until(model, layers: Sequence[int], **inputs) -> None:
    """Run the base model (no LM head) on ``inputs`` and stop after block ``max(layers)``.

    For callers that read block outputs with :func:`record_residual` entered around this call:
    the blocks above the deepest one read, and the LM head, never run.
    """

    def stop(_m, _a, _o):
        raise _StopForward

    handle = find_layers(model)[max(layers)].register_forward_hook(tag(stop))
    try:
        base_model(model)(use_cache=False, **inputs)
    except _StopForward:
        pass
    finally:
        handle.remove()


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="text")
