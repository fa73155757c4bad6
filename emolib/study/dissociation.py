"""Check 5: the user's emotion vs the Assistant's -- and does the header token predict the reply?

The paper (Table 3, Fig. 10) writes 8 prompts in which the user feels one thing and a fitting reply
another (a user afraid of AI, a user insulting the Assistant, a risky plan announced gleefully).
The probes read at the user's last token and at the Assistant colon correlate only r = 0.11: the
header token represents the emotion of the *reply about to be written*, not the user's. Then
(Fig. 11, Table 4) it samples 20-token replies: the colon's reading correlates with the mean over
the reply's tokens at r = 0.87, the user's last token at r = 0.59.

Correlations here are Pearson r over every (prompt, emotion) pair, like the paper's scatter plots.
Such a pooled r also rewards per-emotion offsets shared by every prompt (an emotion that is high
everywhere at both places), so we also report ``r_within``: the same after subtracting each
emotion's mean over the prompts, i.e. whether the readings agree on *which prompt* makes an
emotion high.

Replies are generated in one left-padded batch, greedy by default (deterministic; ``do_sample``
with ``seed`` for the paper's sampling), then re-read in one forward pass over prompt + reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from emolib.capture import pad_id_of, pad_left
from emolib.chat import ChatPrompt, format_user_turn
from emolib.models import model_device
from emolib.study.readout import layer_of, probe_cosines, residual_at
from emolib.vectors import EmotionVectors


@dataclass
class Replies:
    """Generated replies: token ids (without padding or end-of-turn tokens) and their text."""

    prompts: list[ChatPrompt]
    ids: list[list[int]]
    texts: list[str]


def generate_replies(model, tokenizer, prompts: Sequence[ChatPrompt], max_new_tokens: int = 20,
                     do_sample: bool = False, temperature: float = 0.8, seed: int = 0) -> Replies:
    """Short replies to each prompt, batched with left padding; stops at the end-of-turn token."""
    pad = pad_id_of(tokenizer)
    ids, mask = pad_left([p.ids for p in prompts], pad)
    dev = model_device(model)
    stop = {t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None}
    kwargs = {"do_sample": do_sample}
    if do_sample:
        kwargs["temperature"] = temperature
        torch.manual_seed(seed)
    else:
        kwargs.update({"temperature": None, "top_p": None, "top_k": None})
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), max_new_tokens=max_new_tokens,
                             pad_token_id=pad, **kwargs)
    new = out[:, ids.shape[1]:].cpu().tolist()
    reply_ids = []
    for row in new:
        cut = next((k for k, t in enumerate(row) if t in stop), len(row))
        reply_ids.append(row[:cut])
    return Replies(prompts=list(prompts), ids=reply_ids,
                   texts=[tokenizer.decode(r, skip_special_tokens=True) for r in reply_ids])


def dissociation_readings(model, tokenizer, vectors: EmotionVectors, items: Sequence[dict],
                          emotions: Sequence[str], layer: int | None = None, replies: Replies | None = None,
                          max_new_tokens: int = 20, do_sample: bool = False, seed: int = 0) -> tuple[pd.DataFrame, Replies]:
    """Cosines at the user's last token, the assistant-header token and (mean) over the reply.

    Returns a tidy table (``prompt, user_emotion, emotion, user_last, header, reply, layer``) and the
    replies (generated unless given). A reply with no tokens gets NaN in ``reply``.
    """
    layer = layer_of(vectors, layer)
    sub = vectors.select(list(emotions))
    fps = [format_user_turn(tokenizer, it["text"]) for it in items]
    if replies is None:
        replies = generate_replies(model, tokenizer, fps, max_new_tokens=max_new_tokens, do_sample=do_sample, seed=seed)
    seqs, positions = [], []
    for fp, r in zip(fps, replies.ids):
        n = len(fp.ids)
        seqs.append(fp.ids + r)
        positions.append([fp.user_last_index, fp.header_index] + list(range(n, n + len(r))))
    acts = residual_at(model, tokenizer, seqs, positions, [layer])
    rows = []
    for it, a in zip(items, acts):
        cos = probe_cosines(sub, a[:, 0], layer).numpy()
        reply = cos[2:].mean(axis=0) if len(cos) > 2 else np.full(len(sub.emotions), np.nan)
        for k, e in enumerate(sub.emotions):
            rows.append({"prompt": it["id"], "user_emotion": it.get("user"), "emotion": e,
                         "user_last": float(cos[0, k]), "header": float(cos[1, k]), "reply": float(reply[k]),
                         "layer": layer})
    return pd.DataFrame(rows), replies


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def dissociation_stats(df: pd.DataFrame) -> pd.DataFrame:
    """Pearson r between the three read-outs, pooled and within-emotion (tidy rows).

    Columns: ``pair, r_pooled, r_within, n``; pairs ``user_last~header``, ``header~reply``,
    ``user_last~reply``.
    """
    centred = df.copy()
    for col in ("user_last", "header", "reply"):
        centred[col] = df[col] - df.groupby("emotion")[col].transform("mean")
    rows = []
    for a, b in (("user_last", "header"), ("header", "reply"), ("user_last", "reply")):
        rows.append({"pair": f"{a}~{b}", "r_pooled": _pearson(df[a].to_numpy(), df[b].to_numpy()),
                     "r_within": _pearson(centred[a].to_numpy(), centred[b].to_numpy()), "n": int(len(df))})
    return pd.DataFrame(rows)
