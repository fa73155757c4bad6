"""The ``EmotionVectors`` artifact: one direction per emotion per layer, with its provenance.

A file written by :meth:`EmotionVectors.save` is a safetensors file (no pickle) whose metadata
names the model, the layers, the hook site, the token offset, the pooling, the corpus, the
denoising and the library version, so a vectors file found on a disk says what it is.

The maths (the paper's method: story means, centred, denoised), as small pure functions tested on planted data:

* :func:`emotion_means` -- per emotion, the mean of its stories' pooled means;
* :func:`grand_mean_center` -- minus the mean across emotions, each emotion weighted equally
  (not "emotion minus neutral": the common story-style component cancels);
* :class:`NeutralPCA` / :func:`fit_neutral_pca` / :func:`neutral_pca_from_moments` -- principal
  components of activations on emotionally neutral dialogues, fitted per layer, either on
  per-dialogue means (sklearn ``PCA``) or on every token (from a streamed covariance);
* :func:`project_out` -- removing the smallest number of top neutral components that explain
  50 % of the neutral variance (the "50 % rule").

:func:`compute_vectors` chains them into an :class:`EmotionVectors`; :meth:`EmotionVectors.to_gguf`
writes one direction as a llama.cpp control vector.
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
    from emolib.version import __version__

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
    center: torch.Tensor | None = None

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
        bad = [(layer, float(n)) for layer, n in zip(self.layers, self.norms) if not (torch.isfinite(n) and n > 0)]
        if bad:
            raise ValueError(f"norms must be finite and positive (they scale steering and monitor scores); "
                             f"got {bad[:3]} (layer, norm)")
        if not torch.isfinite(self.vectors).all():
            rows = torch.nonzero(~torch.isfinite(self.vectors).all(-1))[:3].tolist()
            raise ValueError("vectors hold NaN or infinite values at (layer, emotion) "
                             + ", ".join(f"({self.layers[i]}, {self.emotions[j]!r})" for i, j in rows))
        if self.center is not None:
            self.center = torch.as_tensor(self.center, dtype=torch.float32)
            if self.center.shape != (n_l, self.vectors.shape[-1]):
                raise ValueError(f"center must be [layers, width] = {(n_l, self.vectors.shape[-1])}, "
                                 f"got shape {tuple(self.center.shape)}")
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
        center = self.center[l_idx].clone() if self.center is not None else None
        return replace(self, vectors=self.vectors[l_idx][:, e_idx].clone(), emotions=[self.emotions[i] for i in e_idx],
                       layers=new_layers, norms=self.norms[l_idx].clone(), default_layer=default, meta=dict(self.meta),
                       center=center)

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

    def centered(self, acts: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """``acts`` minus the grand mean of the training stories at ``layer`` (see ``center``).

        Raw activations carry a large component common to all text; subtracting the same grand
        mean the vectors were centred with makes cosines comparable across emotions.
        """
        self._check_width(acts)
        if self.center is None:
            raise ValueError("These vectors carry no center (grand mean); they were not made by compute_vectors.")
        return acts.float() - self.center[self._layer_pos(layer)]

    def project(self, acts: torch.Tensor, layer: int | None = None, unit: bool = True,
                center: bool = False) -> torch.Tensor:
        """Projection of activations ``[..., width]`` on each emotion: ``[..., emotions]``.

        ``center=True`` subtracts the training grand mean first (:meth:`centered`).
        """
        self._check_width(acts)
        a = self.centered(acts, layer) if center else acts.float()
        v = self.at(layer)
        if unit:
            v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return a @ v.T

    def cosine(self, acts: torch.Tensor, layer: int | None = None, center: bool = False) -> torch.Tensor:
        """Cosine similarity of activations ``[..., width]`` with each emotion: ``[..., emotions]``.

        ``center=True`` first subtracts the training grand mean, which is how the layer sweep
        classifies held-out stories (nearest vector by cosine).
        """
        self._check_width(acts)
        a = self.centered(acts, layer) if center else acts.float()
        return cosine_similarity(a, self.at(layer))

    def with_default_layer(self, layer: int) -> EmotionVectors:
        """A copy whose ``default_layer`` is ``layer`` (checked against ``layers``)."""
        self._layer_pos(layer)
        return replace(self, default_layer=int(layer), meta=dict(self.meta))

    # ---- steering ---------------------------------------------------------------------------
    def steering(self, what: str | dict[str, float] | torch.Tensor, strength: float,
                 layers: Sequence[int] | int | None = None, label: str | None = None):
        """A :class:`~emolib.steering.Steering` value: ``what`` (an emotion, an expression such as
        ``"desperate - calm"``, a weights dict, or a raw ``[width]`` direction) at ``strength`` times
        the stored mean residual norm of each layer (default: the default layer)."""
        from emolib.steering import Steering

        if layers is None:
            self._layer_pos(None)  # a clear error when there is no default layer
            layers = [self.default_layer]
        layers = [int(layers)] if isinstance(layers, int) else [int(x) for x in layers]
        norms = {layer: self.norm_at(layer) for layer in layers}
        if isinstance(what, torch.Tensor):
            vec = torch.as_tensor(what, dtype=torch.float32)
            if vec.shape[-1] != self.width:
                raise ValueError(f"The direction has width {vec.shape[-1]} but the vectors have width {self.width}.")
            return Steering(vec, tuple(layers), float(strength), norms, label or "direction")
        weights = parse_expression(what, self.emotions) if isinstance(what, str) else dict(what)
        combined = self.combine(weights)
        vec = {layer: combined[self._layer_pos(layer)] for layer in layers}
        return Steering(vec, tuple(layers), float(strength), norms, label or (what if isinstance(what, str) else
                                                                               str(weights)))

    def steer(self, model, what: str | dict[str, float] | torch.Tensor, strength: float,
              layers: Sequence[int] | int | None = None, scope="all"):
        """Steer ``model`` toward ``what`` inside a ``with`` block: the one steering entry point.

        ``with vec.steer(model, "desperate - calm", 0.1): model.generate(...)`` adds
        ``0.1 x (mean residual norm) x unit(v_desperate - v_calm)`` to the output of the default
        layer's block at every position; ``scope`` narrows the positions (``"prompt"``,
        ``"response"``, ``k`` or ``(start, stop)``, see :func:`emolib.steering.steer`).
        """
        return self.steering(what, strength, layers).apply(model, (scope,))

    # ---- llama.cpp --------------------------------------------------------------------------
    def to_gguf(self, path: str | Path, expr: str | dict[str, float], layers: Sequence[int] | int | None = None,
                strength: float = 1.0, scale: str = "norm", model_hint: str | None = None) -> Path:
        """Write one direction (an emotion or an expression) as a llama.cpp control-vector GGUF.

        llama.cpp's layout (``common_control_vector_load_one`` and ``llama_adapter_cvec``): a GGUF
        of architecture ``controlvector`` with ``controlvector.model_hint`` and
        ``controlvector.layer_count``, and one 1-D float32 tensor ``direction.<k>`` per layer.
        The loader stores ``direction.k`` at buffer offset ``k - 1`` and ``apply`` reads offset
        ``il - 1`` back into the tensor of block ``il``, which the graph adds to the output of
        0-based block ``il`` (after its residual add). So ``direction.k`` steers the output of
        block ``k`` -- the same index as emolib's layers (HF ``hidden_states[k + 1]``), with no
        shift. ``direction.0`` is rejected by llama.cpp (block 0's output cannot be steered),
        so layer 0 is refused here too.

        ``scale="norm"`` (default) writes ``strength * norm[k] * unit(v)``: then llama.cpp's
        ``--control-vector-scaled file.gguf S`` adds the same vector as emolib's
        ``steer(..., strength=S)``. ``"unit"`` writes ``strength * unit(v)``; ``"raw"`` the
        direction as stored. Note that llama.cpp adds the vector at every position, prompt
        included (like ``scope="all"``), on the layers of ``--control-vector-layer-range``.
        """
        import gguf
        import numpy as np

        weights = parse_expression(expr, self.emotions) if isinstance(expr, str) else dict(expr)
        if layers is None:
            layers = [self.default_layer] if self.default_layer is not None else [x for x in self.layers if x > 0]
        elif isinstance(layers, int):
            layers = [layers]
        layers = [int(x) for x in layers]
        if 0 in layers:
            raise ValueError("llama.cpp control vectors cannot steer block 0 (direction.0 is rejected by its loader).")
        if scale not in {"norm", "unit", "raw"}:
            raise ValueError(f"scale must be 'norm', 'unit' or 'raw', got {scale!r}")
        combined = self.combine(weights)
        hint = model_hint or str(self.meta.get("model", {}).get("model_type") or "llama")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = gguf.GGUFWriter(str(path), "controlvector")
        writer.add_string("controlvector.model_hint", hint)
        writer.add_uint32("controlvector.layer_count", len(layers))
        writer.add_string("emolib.direction", json.dumps(weights, sort_keys=True))
        writer.add_string("emolib.scale", scale)
        writer.add_float32("emolib.strength", float(strength))
        for layer in layers:
            v = combined[self._layer_pos(layer)]
            if scale != "raw":
                n = v.norm()
                if not torch.isfinite(n) or n == 0:
                    raise ValueError(f"The direction {expr!r} is zero at layer {layer}.")
                v = v / n * (self.norm_at(layer) if scale == "norm" else 1.0)
            writer.add_tensor(f"direction.{layer}", (float(strength) * v).numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path

    # ---- files ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write a self-describing safetensors file (tensors + JSON metadata)."""
        header = {
            "schema": SCHEMA, "schema_version": str(SCHEMA_VERSION), "emolib_version": _lib_version(),
            "emotions": json.dumps(self.emotions), "layers": json.dumps(self.layers),
            "default_layer": json.dumps(self.default_layer), "hook_site": HOOK_SITE,
            "meta": json.dumps(self.meta, sort_keys=True, default=str),
        }
        tensors = {"vectors": self.vectors.contiguous(), "norms": self.norms.contiguous()}
        if self.center is not None:
            tensors["center"] = self.center.contiguous()
        return save_atomic(tensors, path, header)

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
                   meta=json.loads(header.get("meta", "{}")), center=tensors.get("center"))


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


def save_atomic(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write a safetensors file through a temporary name and a rename, so a crash never leaves half a file
    where a later stage would read it."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


# ---- the maths ---------------------------------------------------------------------------------
def emotion_means(story_means: torch.Tensor, labels: Sequence[str],
                  emotions: Sequence[str] | None = None) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Per-emotion mean of story means.

    ``story_means`` is ``[n_stories, ..., width]`` (e.g. ``[n, layers, width]``); ``labels`` the
    emotion of each story. Rows with NaN (stories too short to pool) are skipped. Returns
    ``(means [emotions, ..., width] float32, emotion names, stories counted per emotion)``;
    ``emotions`` fixes the order (default: order of first appearance). An emotion in ``emotions``
    with no usable story is an error: a vector averaged over nothing would be silently NaN.
    """
    x = torch.as_tensor(story_means).double()
    if x.shape[0] != len(labels):
        raise ValueError(f"{x.shape[0]} story rows but {len(labels)} labels.")
    names = list(dict.fromkeys(labels)) if emotions is None else list(emotions)
    ok = ~torch.isnan(x.reshape(x.shape[0], -1)).any(dim=1)
    lab = list(labels)
    out: list[torch.Tensor] = []  # one [..., width] mean per emotion, in the order of ``names``
    counts: list[int] = []  # how many usable stories each mean averaged
    ### BEGIN SOLUTION
    for e in names:
        rows = [i for i, lbl in enumerate(lab) if lbl == e and bool(ok[i])]
        if not rows:
            raise ValueError(f"No usable story for emotion {e!r} (none given, or all too short to pool).")
        out.append(x[rows].mean(dim=0))
        counts.append(len(rows))
    ### END SOLUTION
    return torch.stack(out).float(), names, torch.tensor(counts)


def grand_mean_center(means: torch.Tensor, dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``means - mean over emotions`` (each emotion weighted equally, whatever its story count).

    Returns ``(centred, grand_mean)``; ``dim`` is the emotion axis. The centred vectors sum to
    zero over emotions, so a component shared by all stories (the model's generic "story" state)
    is gone.
    """
    m = torch.as_tensor(means).double()
    ### BEGIN SOLUTION
    g = m.mean(dim=dim, keepdim=True)
    ### END SOLUTION
    return (m - g).float(), g.squeeze(dim).float()


def cosine_similarity(acts: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Cosine of each activation ``[..., width]`` with each vector ``[n, width]``: ``[..., n]``.

    Cosine, not the raw dot product: residual norms grow with depth and vary from token to token,
    and a dot product would rank emotions partly by how long the vectors happen to be. A zero
    activation or vector gives 0, not NaN.
    """
    a = torch.as_tensor(acts).float()
    v = torch.as_tensor(vectors).float()
    ### BEGIN SOLUTION
    a_unit = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    v_unit = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return a_unit @ v_unit.T
    ### END SOLUTION


def n_components_for(explained_variance_ratio: torch.Tensor | Sequence[float], threshold: float = 0.5) -> int:
    """The smallest ``k`` whose top-``k`` components explain at least ``threshold`` of the variance.

    ``threshold=0`` means no component (denoising off); ``threshold >= 1`` all of them.
    """
    r = torch.as_tensor(explained_variance_ratio, dtype=torch.float64)
    ### BEGIN SOLUTION
    if threshold <= 0:
        return 0
    cum = torch.cumsum(r, 0)
    hit = torch.nonzero(cum >= threshold - 1e-12).flatten()
    return int(hit[0]) + 1 if len(hit) else int(r.numel())
    ### END SOLUTION


def project_out(v: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Remove from ``v [..., width]`` its component in the span of ``basis [k, width]`` (orthonormal rows)."""
    v = torch.as_tensor(v).float()
    if basis.numel() == 0:
        return v.clone()
    b = basis.float()
    ### BEGIN SOLUTION
    return v - (v @ b.T) @ b
    ### END SOLUTION


@dataclass
class NeutralPCA:
    """Principal components of neutral activations, per layer.

    ``components[i]`` is ``[n_kept, width]`` for layer ``layers[i]`` (orthonormal rows, by
    decreasing variance), ``explained[i]`` the explained-variance ratio of *all* components at
    that layer (so the 50 % rule can be re-applied with another threshold), ``mode`` says what
    the PCA saw: ``"token"`` (every token of every dialogue, positions >= start) or
    ``"dialogue"`` (one pooled mean per dialogue); ``n_samples`` how many rows it saw.
    """

    layers: list[int]
    components: list[torch.Tensor]
    explained: list[torch.Tensor]
    mode: str
    n_samples: int
    threshold: float = 0.5

    def n_removed(self, threshold: float | None = None) -> list[int]:
        t = self.threshold if threshold is None else threshold
        return [n_components_for(r, t) for r in self.explained]

    def basis(self, layer: int, threshold: float | None = None) -> torch.Tensor:
        """The top components to project out at ``layer`` under the threshold: ``[k, width]``."""
        if layer not in self.layers:
            raise ValueError(f"The neutral PCA has no layer {layer} (layers {self.layers}).")
        i = self.layers.index(layer)
        k = n_components_for(self.explained[i], self.threshold if threshold is None else threshold)
        if k > self.components[i].shape[0]:
            raise ValueError(f"Layer {layer} needs {k} components but only {self.components[i].shape[0]} were kept; "
                             "refit with a larger max_components.")
        return self.components[i][:k]

    def save(self, path: str | Path) -> Path:
        """Write the kept components and all explained ratios per layer (safetensors, no pickle)."""
        tensors = {}
        for layer, c, r in zip(self.layers, self.components, self.explained):
            tensors[f"components.{layer}"] = c.float().contiguous()
            tensors[f"explained.{layer}"] = torch.as_tensor(r, dtype=torch.float64).contiguous()
        meta = {"schema": "emolib.neutral_pca", "layers": json.dumps(self.layers), "mode": self.mode,
                "n_samples": str(self.n_samples), "threshold": str(self.threshold)}
        return save_atomic(tensors, path, meta)

    @classmethod
    def load(cls, path: str | Path) -> NeutralPCA:
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"No neutral PCA at {path}; run notebook 02_extract_vectors first.")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("schema") != "emolib.neutral_pca":
                raise ValueError(f"{path} is not an emolib neutral-PCA file (schema {meta.get('schema')!r}).")
            layers = json.loads(meta["layers"])
            comps = [f.get_tensor(f"components.{layer}") for layer in layers]
            expl = [f.get_tensor(f"explained.{layer}") for layer in layers]
        return cls(layers=layers, components=comps, explained=expl, mode=meta["mode"],
                   n_samples=int(meta["n_samples"]), threshold=float(meta["threshold"]))


def _check_rows(x: torch.Tensor, what: str) -> torch.Tensor:
    x = torch.as_tensor(x).double()
    ok = ~torch.isnan(x.reshape(x.shape[0], -1)).any(dim=1)
    if int(ok.sum()) < 2:
        raise ValueError(f"The neutral PCA needs at least 2 usable {what}; got {int(ok.sum())}.")
    return x[ok]


def fit_neutral_pca(dialogue_means: torch.Tensor, layers: Sequence[int], threshold: float = 0.5,
                    max_components: int = 64, seed: int = 0) -> NeutralPCA:
    """Per-dialogue PCA (sklearn ``PCA``) on ``dialogue_means [n, layers, width]``.

    sklearn centres the data, so the first component is not the mean. At most ``n - 1``
    components exist; ``explained`` covers all of them (ratios of the total variance).
    """
    from sklearn.decomposition import PCA

    x = _check_rows(dialogue_means, "dialogues")
    if x.dim() == 2:
        x = x.unsqueeze(1)
    comps, expl = [], []
    for i in range(x.shape[1]):
        pca = PCA(svd_solver="full", random_state=seed).fit(x[:, i].numpy())
        ratio = torch.as_tensor(pca.explained_variance_ratio_, dtype=torch.float64)
        keep = max(n_components_for(ratio, threshold), min(max_components, ratio.numel()))
        comps.append(torch.as_tensor(pca.components_[:keep], dtype=torch.float32))
        expl.append(ratio)
    return NeutralPCA(layers=list(layers), components=comps, explained=expl, mode="dialogue",
                      n_samples=int(x.shape[0]), threshold=threshold)


def neutral_pca_from_moments(count: int, total: torch.Tensor, outer: torch.Tensor, layers: Sequence[int],
                             threshold: float = 0.5, max_components: int = 64) -> NeutralPCA:
    """Per-token PCA from streamed moments: ``total [layers, width]`` = sum of tokens,
    ``outer [layers, width, width]`` = sum of outer products, over ``count`` tokens.

    The covariance ``outer / n - mean mean^T`` is eigendecomposed (float64); its eigenvectors are
    the principal axes sklearn's ``PCA`` would find on the same token matrix (tests check this),
    without ever holding the tokens in memory.
    """
    if count < 2:
        raise ValueError(f"The per-token neutral PCA needs at least 2 tokens; got {count}.")
    total = torch.as_tensor(total).double()
    outer = torch.as_tensor(outer).double()
    comps, expl = [], []
    for i in range(total.shape[0]):
        mu = total[i] / count
        cov = outer[i] / count - torch.outer(mu, mu)
        cov = (cov + cov.T) / 2
        evals, evecs = _eigh_one_thread(cov)
        evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
        ratio = evals / evals.sum().clamp_min(1e-300)
        keep = max(n_components_for(ratio, threshold), min(max_components, ratio.numel()))
        comps.append(evecs[:, :keep].T.float().contiguous())
        expl.append(ratio)
    return NeutralPCA(layers=list(layers), components=comps, explained=expl, mode="token",
                      n_samples=int(count), threshold=threshold)


def _eigh_one_thread(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh`` on one thread: on the shared 2-core machine a 576x576 eigh took 0.06 s
    single-threaded but 0.1-10 s (erratic) with 2 threads competing with other processes."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigh(m)
    finally:
        torch.set_num_threads(prev)


def denoise(vectors: EmotionVectors, pca: NeutralPCA, threshold: float | None = None) -> EmotionVectors:
    """Project the top neutral components (50 % rule by default) out of every vector, layer by layer.

    Centring and projection are both linear, so the order does not matter. The
    number removed per layer and the settings go into ``meta["denoise"]``.
    """
    t = pca.threshold if threshold is None else threshold
    out = vectors.vectors.clone()
    removed = []
    for i, layer in enumerate(vectors.layers):
        b = pca.basis(layer, t)
        out[i] = project_out(vectors.vectors[i], b)
        removed.append(int(b.shape[0]))
    meta = dict(vectors.meta)
    meta["denoise"] = {"method": "project out top neutral principal components", "threshold": t,
                       "pca_mode": pca.mode, "n_neutral_samples": pca.n_samples,
                       "n_removed": dict(zip([str(x) for x in vectors.layers], removed))}
    return replace(vectors, vectors=out, meta=meta)


def compute_vectors(story_means: torch.Tensor, labels: Sequence[str], layers: Sequence[int],
                    norms: torch.Tensor | Sequence[float], emotions: Sequence[str] | None = None,
                    neutral: NeutralPCA | None = None, threshold: float = 0.5,
                    meta: dict[str, Any] | None = None) -> EmotionVectors:
    """Emotion vectors from pooled story means ``[n_stories, layers, width]``.

    ``v_e = mean over stories of e - mean over emotions`` at every layer (each emotion weighted
    equally), then, if ``neutral`` is given, projected off the neutral components that explain
    ``threshold`` of the neutral variance. ``center`` keeps the grand mean, so read-outs on new
    activations can subtract it. ``meta`` (model, corpus, token offset...) is stored with
    the pooling and denoising settings added.
    """
    x = torch.as_tensor(story_means)
    if x.dim() != 3 or x.shape[1] != len(layers):
        raise ValueError(f"story_means must be [stories, {len(layers)} layers, width], got {tuple(x.shape)}")
    means, names, counts = emotion_means(x, labels, emotions)
    centred, grand = grand_mean_center(means, dim=0)
    m = dict(meta or {})
    m.setdefault("pooling", "mean over token positions >= start per story; mean of story means per emotion; "
                            "minus the mean over emotions (each emotion weighted equally)")
    m["stories_per_emotion"] = dict(zip(names, [int(c) for c in counts]))
    m.setdefault("denoise", None)
    vec = EmotionVectors(vectors=centred.transpose(0, 1).contiguous(), emotions=names, layers=list(layers),
                         norms=torch.as_tensor(norms, dtype=torch.float32), meta=m, center=grand)
    if neutral is not None and threshold > 0:
        vec = denoise(vec, neutral, threshold)
    return vec


def read_gguf_control_vector(path: str | Path) -> tuple[dict[int, torch.Tensor], dict[str, Any]]:
    """Read a llama.cpp control-vector GGUF back: ``({layer: direction}, {key: value})``.

    Layers are the ``k`` of ``direction.k`` (the 0-based block whose output llama.cpp steers).
    """
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch = reader.get_field("general.architecture")
    if arch is None or arch.contents() != "controlvector":
        raise ValueError(f"{path} is not a llama.cpp control-vector GGUF (architecture {arch and arch.contents()!r}).")
    fields = {name: f.contents() for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    out: dict[int, torch.Tensor] = {}
    for t in reader.tensors:
        prefix, _, idx = t.name.partition(".")
        if prefix != "direction" or not idx.isdigit():
            raise ValueError(f"Unexpected tensor {t.name!r} in {path}.")
        out[int(idx)] = torch.tensor(t.data.copy(), dtype=torch.float32).reshape(-1)
    return out, fields


def remove_corpus_offsets(story_means: torch.Tensor, labels: Sequence[str],
                          corpora: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Align corpora by different writers before pooling them into one set of vectors.

    A writer adds a constant style offset to every story. The corpus covering the most emotions
    is the anchor; every other corpus is shifted by the mean, over the emotions it shares with
    the anchor, of (its emotion mean - the anchor's emotion mean). Comparing like with like
    (same emotions) keeps the emotion signal out of the offset estimate; without any alignment,
    emotions covered by only one corpus would absorb that corpus's offset. With no shared
    emotion the corpora's grand means are used instead (less exact). Returns the shifted means
    and the offset removed from each corpus (zero for the anchor).
    """
    x = torch.as_tensor(story_means).float()
    names = list(dict.fromkeys(corpora))
    rows = {c: [i for i, k in enumerate(corpora) if k == c] for c in names}
    means = {}
    for c in names:
        m, emos, _ = emotion_means(x[rows[c]], [labels[i] for i in rows[c]])
        means[c] = dict(zip(emos, m.double()))
    anchor = max(names, key=lambda c: len(means[c]))
    out = x.clone()
    offsets = {}
    for c in names:
        shared = [e for e in means[c] if e in means[anchor]]
        if c == anchor:
            delta = torch.zeros_like(x[0]).double()
        elif shared:
            delta = torch.stack([means[c][e] - means[anchor][e] for e in shared]).mean(0)
        else:
            delta = torch.stack(list(means[c].values())).mean(0) - torch.stack(list(means[anchor].values())).mean(0)
        offsets[c] = delta.float()
        out[rows[c]] = x[rows[c]] - delta.float()
    return out, offsets
