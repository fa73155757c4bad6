"""Reading the residual stream at chosen token positions of many prompts, and turning it into probe values.

Stage 03's checks all ask the same question -- "what do the emotion probes say at *this* token?" --
at the assistant-header token, at the user's last token, or over every token of a story or a reply.
This module does the reading once, correctly:

* prompts of different lengths are batched with **left padding** and mask-aware ``position_ids``,
  so a token's activation does not depend on its batch-mates (tests check batched == one by one);
* the residual stream is the output of decoder block ``L`` (:func:`emolib.capture.record_residual`),
  the same place the vectors were extracted from and steering writes to;
* probe values are **cosine similarities** (the paper's read-out for the implicit scenarios and the
  post-training comparison) of the activation *minus the training grand mean* with each emotion
  vector when the vectors carry that mean (``EmotionVectors.center``), else of the raw activation.
  Raw activations share one large component across all text; without removing it every emotion's
  cosine is dominated by a per-emotion constant.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from emolib.capture import pad_id_of, pad_left, record_residual, run_until
from emolib.models import model_device
from emolib.vectors import EmotionVectors


def residual_at(model, tokenizer, seqs: Sequence[Sequence[int]], positions: Sequence[Sequence[int]],
                layers: Sequence[int], batch_size: int = 16) -> list[torch.Tensor]:
    """Block outputs at ``positions[i]`` (indices into ``seqs[i]``) for each sequence.

    Returns one ``[len(positions[i]), len(layers), width]`` float32 CPU tensor per sequence, in input
    order. Sequences are sorted by length into left-padded batches; the LM head never runs, and the
    forward pass stops after the deepest block read.
    """
    if len(seqs) != len(positions):
        raise ValueError(f"{len(seqs)} sequences but {len(positions)} position lists.")
    layers = [int(x) for x in layers]
    for i, (s, p) in enumerate(zip(seqs, positions)):
        if any(not 0 <= int(k) < len(s) for k in p):
            raise ValueError(f"Sequence {i} has {len(s)} tokens; positions {list(p)} fall outside it.")
    dev = model_device(model)
    pad = pad_id_of(tokenizer)
    out: list[torch.Tensor | None] = [None] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            rows = order[b:b + batch_size]
            ids, mask = pad_left([seqs[i] for i in rows], pad)
            pos_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            with record_residual(model, layers) as rec:
                run_until(model, layers, input_ids=ids.to(dev), attention_mask=mask.to(dev),
                          position_ids=pos_ids.to(dev))
            acts = torch.stack([rec[layer][0] for layer in layers], dim=2).cpu()  # [batch, seq, layers, width]
            width_t = ids.shape[1]
            for j, i in enumerate(rows):
                shift = width_t - len(seqs[i])
                idx = torch.as_tensor([int(k) + shift for k in positions[i]], dtype=torch.long)
                out[i] = acts[j, idx].clone()
    return out  # type: ignore[return-value]


def probe_cosines(vectors: EmotionVectors, acts: torch.Tensor, layer: int | None = None,
                  center: bool | None = None) -> torch.Tensor:
    """Cosine of activations ``[..., width]`` with every emotion vector at ``layer``: ``[..., emotions]``.

    ``center=None`` subtracts the vectors' training grand mean when they carry one.
    """
    if center is None:
        center = vectors.center is not None
    return vectors.cosine(acts, layer, center=center)


def probe_projections(vectors: EmotionVectors, acts: torch.Tensor, layer: int | None = None,
                      center: bool | None = None) -> torch.Tensor:
    """Projection of activations on each unit emotion vector (used for token heatmaps): ``[..., emotions]``."""
    if center is None:
        center = vectors.center is not None
    return vectors.project(acts, layer, unit=True, center=center)


def layer_of(vectors: EmotionVectors, layer: int | None) -> int:
    """The layer a check reads: ``layer`` if given, else the vectors' default layer."""
    if layer is None:
        if vectors.default_layer is None:
            raise ValueError("The vectors have no default_layer; pass layer=.")
        return int(vectors.default_layer)
    if layer not in vectors.layers:
        raise ValueError(f"Layer {layer} is not in the vectors (layers {vectors.layers}).")
    return int(layer)
