"""The ``EmotionVectors`` artifact: one direction per emotion per layer, with its provenance.

A file written by :meth:`EmotionVectors.save` is a safetensors file (no pickle) whose metadata
names the model, the layers, the hook site, the token offset, the pooling, the corpus, the
denoising and the library version, so a vectors file found on a disk says what it is.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

SCHEMA = "emolib.emotion_vectors"
SCHEMA_VERSION = 1
HOOK_SITE = "decoder_block_output"


def _lib_version() -> str:
    from . import __version__

    return __version__


@dataclass
class EmotionVectors:
    """Emotion directions ``vectors[layer_index, emotion_index, width]`` (float32).

    ``layers`` are the model's block indices that ``vectors`` covers, in order; ``norms`` the mean
    residual-stream norm at each of those layers (steering scale); ``default_layer`` the block
    index chosen by the layer sweep; ``meta`` free-form provenance (JSON-serialisable).
    """

    vectors: torch.Tensor
    emotions: list[str]
    layers: list[int]
    norms: torch.Tensor
    default_layer: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.vectors = torch.as_tensor(self.vectors, dtype=torch.float32)
        self.norms = torch.as_tensor(self.norms, dtype=torch.float32)
        self.emotions = list(self.emotions)
        self.layers = [int(x) for x in self.layers]
        if self.vectors.dim() != 3:
            raise ValueError(f"vectors must be [layers, emotions, width], got shape {tuple(self.vectors.shape)}")
        n_l, n_e, _ = self.vectors.shape
        if n_l != len(self.layers):
            raise ValueError(f"vectors cover {n_l} layers but {len(self.layers)} layer indices were given")
        if n_e != len(self.emotions):
            raise ValueError(f"vectors hold {n_e} emotions but {len(self.emotions)} names were given")
        if len(set(self.emotions)) != n_e:
            raise ValueError("emotion names must be unique")
        if self.norms.shape != (n_l,):
            raise ValueError(f"norms must have one entry per layer ({n_l}), got shape {tuple(self.norms.shape)}")
        if self.default_layer is not None and self.default_layer not in self.layers:
            raise ValueError(f"default_layer {self.default_layer} is not among the layers {self.layers}")

    # ---- shape and selection -------------------------------------------------------------
    @property
    def width(self) -> int:
        return int(self.vectors.shape[-1])

    def _layer_pos(self, layer: int | None) -> int:
        if layer is None:
            if self.default_layer is None:
                raise ValueError("No layer given and the vectors have no default_layer; pass layer=.")
            layer = self.default_layer
        if layer not in self.layers:
            raise ValueError(f"Layer {layer} is not in these vectors (layers {self.layers[0]}..{self.layers[-1]}).")
        return self.layers.index(layer)

    def index(self, emotion: str) -> int:
        """Position of ``emotion``; a wrong name lists the closest valid names."""
        try:
            return self.emotions.index(emotion)
        except ValueError:
            close = difflib.get_close_matches(emotion, self.emotions, n=5, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise KeyError(f"Unknown emotion {emotion!r}.{hint}") from None

    def at(self, layer: int | None = None) -> torch.Tensor:
        """``[emotions, width]`` at one layer (the default layer if None)."""
        return self.vectors[self._layer_pos(layer)]

    def norm_at(self, layer: int | None = None) -> float:
        return float(self.norms[self._layer_pos(layer)])

    def vector(self, emotion: str, layer: int | None = None) -> torch.Tensor:
        """One emotion's ``[width]`` direction at one layer."""
        return self.at(layer)[self.index(emotion)]

    def select(self, emotions: Sequence[str] | str | None = None,
               layers: Sequence[int] | int | None = None) -> EmotionVectors:
        """A new artifact restricted to some emotions and/or layers (same metadata)."""
        if isinstance(emotions, str):
            emotions = [emotions]
        if isinstance(layers, int):
            layers = [layers]
        e_idx = [self.index(e) for e in emotions] if emotions is not None else list(range(len(self.emotions)))
        l_idx = [self._layer_pos(layer) for layer in layers] if layers is not None else list(range(len(self.layers)))
        new_layers = [self.layers[i] for i in l_idx]
        default = self.default_layer if self.default_layer in new_layers else None
        return replace(self, vectors=self.vectors[l_idx][:, e_idx].clone(), emotions=[self.emotions[i] for i in e_idx],
                       layers=new_layers, norms=self.norms[l_idx].clone(), default_layer=default, meta=dict(self.meta))

    def combine(self, weights: dict[str, float]) -> torch.Tensor:
        """A weighted sum of emotions at every layer, ``[layers, width]``: e.g. ``{"desperate": 1, "calm": -1}``."""
        out = torch.zeros(len(self.layers), self.width)
        for name, w in weights.items():
            out += float(w) * self.vectors[:, self.index(name)]
        return out

    def direction(self, expr: str | dict[str, float], layer: int | None = None) -> torch.Tensor:
        """A direction at one layer from an expression like ``"desperate - calm"`` or ``"2*happy + sad"``."""
        weights = parse_expression(expr, self.emotions) if isinstance(expr, str) else expr
        return self.combine(weights)[self._layer_pos(layer)]

    # ---- read-outs -----------------------------------------------------------------------
    def _check_width(self, acts: torch.Tensor) -> None:
        if acts.shape[-1] != self.width:
            raise ValueError(f"Activations have width {acts.shape[-1]} but the vectors have width {self.width}.")

    def project(self, acts: torch.Tensor, layer: int | None = None, unit: bool = True) -> torch.Tensor:
        """Projection of activations ``[..., width]`` on each emotion: ``[..., emotions]``."""
        self._check_width(acts)
        v = self.at(layer)
        if unit:
            v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return acts.float() @ v.T

    def cosine(self, acts: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """Cosine similarity of activations ``[..., width]`` with each emotion: ``[..., emotions]``."""
        proj = self.project(acts, layer, unit=True)
        return proj / acts.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)

    # ---- files ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write a self-describing safetensors file (tensors + JSON metadata)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {
            "schema": SCHEMA, "schema_version": str(SCHEMA_VERSION), "emolib_version": _lib_version(),
            "emotions": json.dumps(self.emotions), "layers": json.dumps(self.layers),
            "default_layer": json.dumps(self.default_layer), "hook_site": HOOK_SITE,
            "meta": json.dumps(self.meta, sort_keys=True, default=str),
        }
        tmp = path.with_suffix(path.suffix + ".tmp")
        save_file({"vectors": self.vectors.contiguous(), "norms": self.norms.contiguous()}, str(tmp), metadata=header)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> EmotionVectors:
        """Read a file written by :meth:`save`; a file of another kind gives a clear error."""
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"No vectors file at {path}; run notebook 02_extract_vectors first.")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                keys = set(f.keys())
                tensors = {k: f.get_tensor(k) for k in keys}
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(f"{path} is not a safetensors file ({err}).") from None
        if header.get("schema") != SCHEMA or not {"vectors", "norms"} <= keys:
            raise ValueError(f"{path} is a safetensors file but not an emolib EmotionVectors file (schema {header.get('schema')!r}).")
        version = int(header.get("schema_version", "0"))
        if version > SCHEMA_VERSION:
            raise ValueError(f"{path} has schema version {version}; this emolib reads up to {SCHEMA_VERSION}. Upgrade emolib.")
        return cls(vectors=tensors["vectors"], norms=tensors["norms"], emotions=json.loads(header["emotions"]),
                   layers=json.loads(header["layers"]), default_layer=json.loads(header["default_layer"]),
                   meta=json.loads(header.get("meta", "{}")))


def parse_expression(expr: str, names: Sequence[str]) -> dict[str, float]:
    """Parse ``"desperate - calm"`` or ``"0.5*happy + sad"`` into weights.

    Operators need spaces around them, so hyphenated names (``grief-stricken``) and two-word names
    (``at ease``) parse as names.
    """
    import re

    parts = re.split(r"\s+([+-])\s+", expr.strip())
    terms = [(1.0, parts[0])] + [(1.0 if op == "+" else -1.0, t) for op, t in zip(parts[1::2], parts[2::2])]
    weights: dict[str, float] = {}
    for sign, term in terms:
        t = term.strip()
        coef = 1.0
        if "*" in t:
            c, t = t.split("*", 1)
            coef, t = float(c), t.strip()
        if t not in names and t.startswith("-") and t[1:] in names:
            sign, t = -sign, t[1:]
        if t not in names:
            close = difflib.get_close_matches(t, list(names), n=5, cutoff=0.5)
            raise KeyError(f"Unknown emotion {t!r} in {expr!r}." + (f" Did you mean: {', '.join(close)}?" if close else ""))
        weights[t] = weights.get(t, 0.0) + sign * coef
    return weights
