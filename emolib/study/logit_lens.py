"""Logit lens on emotion vectors: which tokens does each direction push up, and which down?

The paper (Table 1) multiplies each vector by the unembedding and lists the top and bottom tokens
(sad -> mourning, grief, tears...; calm down-weights swear words). A direction that means "sad"
should, read straight into the vocabulary, favour sad words. We apply the architecture's final
norm's *gain* before the unembedding, because the model only ever unembeds normalised states:

* RMSNorm (Llama, Qwen, SmolLM, Gemma): ``RMSNorm(v) = v / rms(v) * g`` -- the division is a
  positive scalar and cannot change a ranking, so we use ``v * g`` (Gemma stores ``g - 1``; its
  norm class adds the 1 back, which is why we call the module rather than read its weight);
* LayerNorm (GPT-2): ``(v - mean(v)) * g``; the bias is dropped because it does not depend on ``v``
  (it would add the same logits to every emotion's list).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from emolib.study.readout import layer_of
from emolib.vectors import EmotionVectors


def final_norm(model) -> torch.nn.Module | None:
    """The norm applied before the LM head, or None if none is found."""
    for path in ("model.norm", "model.language_model.norm", "model.final_layernorm", "transformer.ln_f",
                 "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.Module):
            return obj
    return None


def lens_directions(model, directions: torch.Tensor) -> torch.Tensor:
    """Vocabulary logits ``[n, vocab]`` of directions ``[n, width]`` through the final norm's gain."""
    v = directions.float()
    norm = final_norm(model)
    dev = next(model.parameters()).device
    with torch.inference_mode():
        if isinstance(norm, torch.nn.LayerNorm):
            v = v - v.mean(dim=-1, keepdim=True)
            if norm.weight is not None:
                v = v * norm.weight.detach().float().cpu()
        elif norm is not None:
            # RMS-style norms: the module's output for v is v / rms(v) * gain; rescale to |v| so the
            # logits stay in the units of the vector (the ranking is what matters).
            out = norm(v.to(dev, dtype=next(norm.parameters(), v).dtype)).float().cpu()
            rms = v.pow(2).mean(dim=-1, keepdim=True).sqrt()
            v = out * rms
        head = model.get_output_embeddings()
        logits = head(v.to(dev, dtype=head.weight.dtype)).float().cpu()
    return logits


def logit_lens(model, tokenizer, vectors: EmotionVectors, emotions: Sequence[str] | None = None,
               layer: int | None = None, k: int = 5) -> pd.DataFrame:
    """Top and bottom ``k`` tokens per emotion: a tidy table.

    Columns: ``emotion, direction ("top"|"bottom"), rank (1..k), token, token_id, logit, layer``.
    Logits are centred per emotion (minus the mean over the vocabulary) so they read as "pushed up"
    or "pushed down" relative to a typical token.
    """
    layer = layer_of(vectors, layer)
    emotions = list(emotions) if emotions is not None else list(vectors.emotions)
    dirs = torch.stack([vectors.vector(e, layer) for e in emotions])
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    logits = lens_directions(model, dirs)
    n_vocab = len(tokenizer)
    logits = logits[:, :n_vocab]  # some heads pad the vocabulary
    logits = logits - logits.mean(dim=-1, keepdim=True)
    rows = []
    for i, e in enumerate(emotions):
        for direction, largest in (("top", True), ("bottom", False)):
            vals, ids = torch.topk(logits[i], k, largest=largest)
            for r, (val, tid) in enumerate(zip(vals.tolist(), ids.tolist()), start=1):
                rows.append({"emotion": e, "direction": direction, "rank": r, "token": tokenizer.decode([tid]),
                             "token_id": int(tid), "logit": float(val), "layer": layer})
    return pd.DataFrame(rows)


def lens_table(df: pd.DataFrame) -> pd.DataFrame:
    """Wide view for display: one row per emotion, ``top`` and ``bottom`` tokens joined by " | "
    (escaped, and cut at 14 characters so a run of tabs cannot swamp the table)."""
    def show(t: str) -> str:
        t = repr(t)[1:-1]  # line breaks and tabs made visible
        return t if len(t) <= 14 else t[:13] + "\u2026"

    def join(sub: pd.DataFrame) -> str:
        return " | ".join(show(t) for t in sub.sort_values("rank")["token"])

    out = []
    for e in dict.fromkeys(df["emotion"]):
        sub = df[df["emotion"] == e]
        out.append({"emotion": e, "top": join(sub[sub["direction"] == "top"]),
                    "bottom": join(sub[sub["direction"] == "bottom"])})
    return pd.DataFrame(out)


def lens_hits(df: pd.DataFrame, emotion_words: dict[str, Sequence[str]] | None = None) -> pd.DataFrame:
    """Per emotion: does a top token start a word of the emotion's own family?

    A crude, automatic summary of a qualitative table: ``emotion_words`` maps an emotion to word
    stems (default: the emotion's own name's first 4 letters). Columns ``emotion, hit, tokens``.
    """
    rows = []
    for e in dict.fromkeys(df["emotion"]):
        stems = [s.lower() for s in (emotion_words or {}).get(e, [e[:4]])]
        toks = df[(df["emotion"] == e) & (df["direction"] == "top")]["token"].tolist()
        clean = [t.strip().lower() for t in toks]
        hit = any(c and any(c.startswith(s) or s.startswith(c) and len(c) >= 3 for s in stems) for c in clean)
        rows.append({"emotion": e, "hit": bool(hit), "tokens": toks})
    return pd.DataFrame(rows)
