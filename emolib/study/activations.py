"""Pooled activations of a corpus, stored in the run folder: streaming, resumable, self-checking.

Notebook 02 turns every kept story (and every neutral dialogue) into one pooled vector per layer:
the mean block output over token positions ``>= start`` (:func:`emolib.capture.pooled_means`).
This module runs that over a corpus in shards and keeps the results under
``<run>/activations/<name>/``:

* ``manifest.json`` -- the settings the shards were made with (format, model, revision, token
  offset, layers, max length); a mismatch means the shards belong to another experiment, so *the
  shards* (and nothing else) are removed and pooling starts again. A ``manifest.json`` that does
  not declare emolib's format is someone else's: the folder is left alone and an error names it;
* ``shard-00000.safetensors``, ... -- ``means [n, layers, width]`` in float16 (storage only: all
  maths is float32 or better), ``n_tokens``, and the per-shard residual-norm statistics; the
  story ids are in the shard's metadata. A shard holds no clock time, so the same records pooled
  with the same settings give byte-identical shards, on one process or on a Ray cluster;
* ``timings.jsonl`` -- wall time and token count of each shard as it was written (for throughput).

A crash loses at most the shard in flight; a rerun pools only the records not yet in a shard. One
process writes a folder at a time (:func:`emolib.study.locks.exclusive`).

The per-token neutral PCA needs every token's activation, but only through its covariance:
:func:`neutral_token_moments` streams the dialogues batch by batch and keeps running sums
(``sum x`` and ``sum x x^T`` per layer, shifted for numerical safety), never the tokens.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from emolib.capture import (
    PooledActivations,
    _resolve_layers,
    encode_texts,
    pad_batch,
    pad_id_of,
    pool_mask,
    pooled_means,
    record_residual,
    truncation_warning,
)
from emolib.engines.jobs import run_jobs
from emolib.models import base_model, model_device
from emolib.study.locks import exclusive

MANIFEST = "manifest.json"
TIMINGS = "timings.jsonl"
FORMAT = "emolib.pooled_activations/1"


def corpus_hash(records: Sequence[dict]) -> str:
    """sha256 over the (id, text) pairs in order: names the exact corpus a result came from."""
    h = hashlib.sha256()
    for r in records:
        h.update(str(r["id"]).encode())
        h.update(b"\0")
        h.update(str(r["text"]).encode())
        h.update(b"\1")
    return h.hexdigest()


@dataclass
class PooledCorpus:
    """Pooled means of a corpus, aligned with its records.

    ``means[i]`` (``[layers, width]`` float32) belongs to ``ids[i]``; rows of texts too short to
    pool (no token at or past ``start``) are NaN and have ``n_tokens == 0``. ``residual_norms`` is
    the mean L2 norm of the block output per layer over every token but each text's first.
    """

    ids: list[str]
    means: torch.Tensor
    n_tokens: torch.Tensor
    layers: list[int]
    residual_norms: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> torch.Tensor:
        return self.n_tokens > 0

    def at(self, layer: int) -> torch.Tensor:
        """``[n, width]`` at one block index."""
        if layer not in self.layers:
            raise ValueError(f"Layer {layer} was not pooled (layers {self.layers}).")
        return self.means[:, self.layers.index(layer)]

    def take(self, ids: Sequence[str]) -> PooledCorpus:
        """Rows for ``ids``, in that order."""
        pos = {k: i for i, k in enumerate(self.ids)}
        missing = [k for k in ids if k not in pos]
        if missing:
            raise KeyError(f"{len(missing)} ids were not pooled, e.g. {missing[:3]}")
        rows = [pos[k] for k in ids]
        return PooledCorpus(ids=list(ids), means=self.means[rows], n_tokens=self.n_tokens[rows], layers=self.layers,
                            residual_norms=self.residual_norms, meta=dict(self.meta))


def _settings(model_id: str, start: int, layers: list[int], max_length: int | None) -> dict[str, Any]:
    return {"format": FORMAT, "model": model_id, "start": int(start), "layers": layers,
            "max_length": max_length, "hook_site": "decoder_block_output"}


def _read_shards(folder: Path) -> list[dict[str, Any]]:
    from safetensors import safe_open

    shards = []
    for p in sorted(folder.glob("shard-*.safetensors")):
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            meta = json.loads(meta["shard"]) if "shard" in meta else {k: json.loads(v) for k, v in meta.items()}
            shards.append({"ids": list(meta["ids"]), "means": f.get_tensor("means"),
                           "n_tokens": f.get_tensor("n_tokens"), "norm_sum": f.get_tensor("norm_sum"),
                           "norm_count": int(meta["norm_count"]), "total_tokens": int(meta.get("total_tokens", 0))})
    return shards


def _timings(folder: Path) -> float:
    """Seconds spent writing the folder's shards (``timings.jsonl``; 0 if absent)."""
    path = folder / TIMINGS
    if not path.exists():
        return 0.0
    total = 0.0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            total += float(json.loads(line)["seconds"])
        except (ValueError, KeyError, TypeError):
            continue  # a torn line from a kill: timing is informative only
    return total


def _write_shard(folder: Path, index: int, ids: list[str], pooled, norm_count: int) -> None:
    from safetensors.torch import save_file

    path = folder / f"shard-{index:05d}.safetensors"
    tmp = path.with_suffix(".tmp")
    norm_sum = pooled.residual_norms.double() * norm_count
    save_file({"means": pooled.means.to(torch.float16).contiguous(), "n_tokens": pooled.n_tokens.contiguous(),
               "norm_sum": norm_sum.contiguous()}, str(tmp),
              # one metadata key: safetensors writes several keys in a random order, and a shard must be the
              # same bytes every time it is made
              metadata={"shard": json.dumps({"ids": ids, "norm_count": norm_count, "total_tokens": pooled.total_tokens},
                                            sort_keys=True)})
    tmp.replace(path)
    with open(folder / TIMINGS, "a", encoding="utf-8") as f:
        f.write(json.dumps({"shard": path.name, "seconds": round(pooled.seconds, 3), "tokens": pooled.total_tokens}) + "\n")


def pool_chunk(model, tokenizer, **kwargs) -> PooledActivations:
    """:func:`~emolib.capture.pooled_means` of one shard, its means already in the float16 they are
    stored in: what a Ray worker ships back is half the bytes, and the shard is the same."""
    pooled = pooled_means(model, tokenizer, warn=False, **kwargs)  # pool_corpus warns once for the corpus
    pooled.means = pooled.means.to(torch.float16)
    return pooled


def pool_corpus(model, tokenizer, records: Sequence[dict], folder: str | Path, *, model_id: str,
                start: int = 50, layers: Sequence[int] | None = None, batch_size: int = 8,
                shard_size: int = 128, max_length: int | None = 1024, progress: bool = False,
                desc: str = "pooling", engine=None) -> PooledCorpus:
    """Pool every record's ``text`` at every layer into ``folder`` and return the result.

    ``model_id`` names the weights (e.g. ``f"{info.name}@{info.revision}"``); together with
    ``start``, ``layers`` and ``max_length`` it must match the folder's manifest, else the old
    shards (only they) are removed first; a folder whose manifest emolib did not write is refused.
    Records already in a shard are not pooled again. The returned
    rows follow ``records``' order. With ``engine`` (:class:`emolib.engines.ray_engine.RayEngine`) each
    shard's chunk is pooled on a worker and the shards are written here, in order, as they come
    back: the same chunks, hence the same numbers, as in one process (``model`` may be None).
    """
    if not records:
        raise ValueError("pool_corpus got no records.")
    ids = [str(r["id"]) for r in records]
    if len(set(ids)) != len(ids):
        raise ValueError("Record ids must be unique.")
    idx = _resolve_layers(model if model is not None else engine.describe()[1].n_layers, layers)
    folder = Path(folder)
    settings = _settings(model_id, start, idx, max_length)
    with exclusive(folder, what=f"pooling {desc} into {folder.name}"):
        return _pool_locked(model, tokenizer, records, folder, settings, idx, ids, start=start, batch_size=batch_size,
                            shard_size=shard_size, max_length=max_length, progress=progress, desc=desc, engine=engine)


def _prepare_folder(folder: Path, settings: dict[str, Any]) -> None:
    """Make ``folder`` hold shards of ``settings``: remove *our* stale shards, never anything else."""
    man_path = folder / MANIFEST
    if man_path.exists():
        try:
            old = json.loads(man_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            old = None
        if not isinstance(old, dict) or old.get("format") != FORMAT:
            raise ValueError(f"{folder} holds a {MANIFEST} that emolib did not write (no format {FORMAT!r}); "
                             "its files are left untouched. Pool into an empty folder or one emolib made.")
        if old != settings:
            for p in list(folder.glob("shard-*.safetensors")) + list(folder.glob("shard-*.tmp")) + [folder / TIMINGS]:
                p.unlink(missing_ok=True)
            man_path.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    if not man_path.exists():
        man_path.write_text(json.dumps(settings, indent=1))


def _pool_locked(model, tokenizer, records, folder: Path, settings, idx, ids, *, start, batch_size, shard_size,
                 max_length, progress, desc, engine) -> PooledCorpus:
    _prepare_folder(folder, settings)
    shards = _read_shards(folder)
    done = {k for s in shards for k in s["ids"]}
    todo = [r for r in records if str(r["id"]) not in done]
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=desc, unit="text")
    n_shard = len(shards)
    chunks = [todo[i:i + shard_size] for i in range(0, len(todo), shard_size)]
    jobs = [{"texts": [r["text"] for r in chunk], "ids": [str(r["id"]) for r in chunk], "layers": idx,
             "start": start, "batch_size": batch_size, "max_length": max_length} for chunk in chunks]
    cut, longest = 0, 0
    try:
        with closing(run_jobs(pool_chunk, jobs, model, tokenizer, engine)) as results:
            for job, pooled in zip(jobs, results):
                _write_shard(folder, n_shard, job["ids"], pooled, pooled.total_tokens - len(job["ids"]))
                n_shard += 1
                cut += getattr(pooled, "n_truncated", 0)
                longest = max(longest, getattr(pooled, "longest", 0))
                if bar is not None:
                    bar.update(len(job["ids"]))
    finally:
        if bar is not None:
            bar.close()
    if cut:
        truncation_warning(f"pooling {desc}", cut, len(todo), max_length, longest)
    return load_pooled(folder, ids)


def load_pooled(folder: str | Path, ids: Sequence[str] | None = None) -> PooledCorpus:
    """Read the shards of ``folder`` (all rows, or the rows of ``ids`` in that order), as float32."""
    folder = Path(folder)
    if not (folder / MANIFEST).exists():
        raise FileNotFoundError(f"No pooled activations in {folder}; run notebook 02_extract_vectors.")
    settings = json.loads((folder / MANIFEST).read_text())
    shards = _read_shards(folder)
    if not shards:
        raise FileNotFoundError(f"{folder} has a manifest but no shards.")
    all_ids = [k for s in shards for k in s["ids"]]
    means = torch.cat([s["means"] for s in shards]).float()
    n_tok = torch.cat([s["n_tokens"] for s in shards])
    count = sum(s["norm_count"] for s in shards)
    norms = (sum(s["norm_sum"] for s in shards) / max(count, 1)).float()
    meta = {**settings, "seconds": _timings(folder),
            "total_tokens": sum(s["total_tokens"] for s in shards), "folder": str(folder)}
    full = PooledCorpus(ids=all_ids, means=means, n_tokens=n_tok, layers=list(settings["layers"]),
                        residual_norms=norms, meta=meta)
    return full if ids is None else full.take([str(k) for k in ids])


# ---- per-token moments for the neutral PCA --------------------------------------------------------
@dataclass
class TokenMoments:
    """Running first and second moments of per-token activations, per layer (float64).

    Sums are of ``x - shift`` (the shift is the first batch's mean), which keeps
    ``E[xx^T] - E[x]E[x]^T`` accurate when activations share a large common offset.
    """

    layers: list[int]
    count: int
    total: torch.Tensor  # [layers, width]  sum of (x - shift)
    outer: torch.Tensor  # [layers, width, width]  sum of (x - shift)(x - shift)^T
    shift: torch.Tensor  # [layers, width]
    seconds: float = 0.0
    text_means: torch.Tensor | None = None  # [texts, layers, width]: per-text means of the same tokens (NaN if none)
    total_tokens: int = 0

    def mean(self) -> torch.Tensor:
        return self.shift.double() + self.total / max(self.count, 1)

    def covariance(self) -> torch.Tensor:
        m = self.total / self.count
        return self.outer / self.count - m.unsqueeze(-1) * m.unsqueeze(-2)


def neutral_token_moments(model, tokenizer, texts: Sequence[str], layers: Sequence[int] | None = None,
                          start: int = 50, batch_size: int = 8, max_length: int | None = 1024) -> TokenMoments:
    """Stream ``texts`` through the model and accumulate, per layer, the moments of the block
    outputs at token positions ``>= start`` (counted from each text's first token).

    Memory is one batch of activations plus ``layers x width x width`` sums, whatever the number
    of tokens. Uses :func:`emolib.capture.record_residual` (no new hook code); batches are
    right-padded, so positions are plain indices and padding is masked out. The same pass also
    yields each text's mean over those tokens (``text_means``), so the per-dialogue PCA needs no
    second pass over the neutral corpus.
    """
    idx = _resolve_layers(model, layers)
    dev = model_device(model)
    width = int(model.config.hidden_size)
    enc = encode_texts(tokenizer, texts, max_length, what="neutral_token_moments")
    order = sorted(range(len(texts)), key=lambda i: len(enc[i]))
    pad_id = pad_id_of(tokenizer)
    total = torch.zeros(len(idx), width, dtype=torch.float64)
    outer = torch.zeros(len(idx), width, width, dtype=torch.float64)
    shift = torch.zeros(len(idx), width)
    text_means = torch.full((len(texts), len(idx), width), float("nan"))
    count = 0
    n_seen = 0
    t0 = time.perf_counter()
    with torch.inference_mode(), record_residual(model, idx) as rec:
        for b in range(0, len(order), batch_size):
            rows = order[b:b + batch_size]
            ids, mask = pad_batch([enc[r] for r in rows], pad_id, "right")
            keep2d = pool_mask(mask, start)
            keep = keep2d.reshape(-1)
            n_seen += int(mask.sum())
            if not keep.any():
                continue
            base_model(model)(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False)
            per_row = keep2d.sum(1)
            has = per_row > 0
            for k, layer in enumerate(idx):
                full = rec[layer].pop().float().cpu()
                text_means[torch.tensor(rows)[has], k] = ((full * keep2d.unsqueeze(-1)).sum(1)[has]
                                                          / per_row[has].unsqueeze(-1))
                h = full.reshape(-1, width)[keep]
                if count == 0:
                    shift[k] = h.mean(0)
                x = h - shift[k]
                total[k] += x.sum(0).double()
                outer[k] += (x.T @ x).double()
            count += int(keep.sum())
    if count == 0:
        raise ValueError(f"No neutral token at position >= {start}: the dialogues are all too short.")
    return TokenMoments(layers=idx, count=count, total=total, outer=outer, shift=shift,
                        seconds=time.perf_counter() - t0, text_means=text_means, total_tokens=n_seen)


# ---- corpora for notebook 02 ---------------------------------------------------------------------
CORPORA = ("reference", "generated", "both")


def corpus_sources(corpus: str) -> list[str]:
    """``"reference"`` / ``"generated"`` / ``"both"`` -> the list of single sources."""
    if corpus not in CORPORA:
        raise ValueError(f"corpus must be one of {CORPORA}, got {corpus!r}")
    return ["generated", "reference"] if corpus == "both" else [corpus]


def load_records(source: str, run: str | Path, kind: str = "story",
                 emotions: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Kept records of one source (``"reference"``: this project's reference corpus in the package data; ``"generated"``:
    ``<run>/stories``), via :func:`emolib.study.corpus.load_corpus`, restricted to ``emotions`` for stories.

    Each record gets ``corpus`` = the source name, so mixed lists stay traceable.
    """
    from emolib.study.corpus import load_corpus

    if source not in ("reference", "generated"):
        raise ValueError(f"source must be 'reference' or 'generated', got {source!r}")
    recs = load_corpus("reference" if source == "reference" else Path(run), kind=kind, kept_only=True)
    if kind == "story" and emotions is not None:
        keep = set(emotions)
        recs = [r for r in recs if r["emotion"] in keep]
    return [dict(r, corpus=source) for r in recs]


def activations_folder(run: str | Path, source: str, kind: str) -> Path:
    """``<run>/activations/<source>_<kind>``: one resumable shard folder per corpus and kind."""
    return Path(run) / "activations" / f"{source}_{kind}"


def cached_token_moments(model, tokenizer, records: Sequence[dict], path: str | Path, *, model_id: str,
                         layers: Sequence[int] | None = None, start: int = 50, batch_size: int = 8,
                         max_length: int | None = 1024) -> TokenMoments:
    """:func:`neutral_token_moments` for ``records``, cached in ``path`` (one safetensors file).

    The file holds the count, the mean (float64) and the covariance (float32: ~40 MB for 30 layers
    of width 576) and, as metadata, the settings and the corpus hash; it is reused only when all of
    them match, else recomputed and overwritten.
    """
    from safetensors import safe_open

    idx = _resolve_layers(model, layers)
    path = Path(path)
    settings = {**_settings(model_id, start, idx, max_length), "corpus": corpus_hash(records)}
    if path.exists():
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if json.loads(meta.get("settings", "{}")) == settings:
                count = int(meta["count"])
                mean, cov = f.get_tensor("mean"), f.get_tensor("cov").double()
                return TokenMoments(layers=idx, count=count, total=torch.zeros_like(mean), outer=cov * count,
                                    shift=mean, seconds=float(meta.get("seconds", 0)),
                                    total_tokens=int(meta.get("total_tokens", 0)))
    mom = neutral_token_moments(model, tokenizer, [r["text"] for r in records], layers=idx, start=start,
                                batch_size=batch_size, max_length=max_length)
    save_moments(mom, path, settings)
    return mom


def save_moments(mom: TokenMoments, path: str | Path, settings: dict[str, Any]) -> Path:
    """Write ``mom`` as count + mean (float64) + covariance (float32) with ``settings`` as metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"mean": mom.mean().contiguous(), "cov": mom.covariance().float().contiguous()}, str(tmp),
              metadata={"settings": json.dumps(settings), "count": str(mom.count), "seconds": f"{mom.seconds:.3f}",
                        "total_tokens": str(mom.total_tokens)})
    tmp.replace(path)
    return path


def cached_masked_means(model, tokenizer, records: Sequence[dict], encode_one, layers: Sequence[int], *,
                        cache: str | Path | None, model_id: str, batch_size: int = 8,
                        desc: str = "pooling") -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`emolib.capture.masked_means` over ``records`` (``encode_one(record) -> (ids, mask)``), kept in
    ``cache`` (a safetensors file and its ``.json`` key: record ids, layers, model). A cache made for other
    records, layers or another model is recomputed, never reused; the file is written atomically."""
    from safetensors.torch import load_file

    from emolib.capture import masked_means
    from emolib.vectors import save_atomic

    key = {"ids": [r["id"] for r in records], "layers": [int(x) for x in layers], "model": model_id}
    meta_path = Path(str(cache) + ".json") if cache is not None else None
    if cache is not None and Path(cache).exists() and meta_path.exists():
        if json.loads(meta_path.read_text()).get("key") == key:
            stored = load_file(str(cache))
            return stored["x"], stored["counts"]
    enc = [encode_one(r) for r in records]
    x, counts = masked_means(model, tokenizer, [e[0] for e in enc], [e[1] for e in enc], layers=layers,
                             batch_size=batch_size, progress=True, desc=desc)
    if cache is not None:
        save_atomic({"x": x.contiguous(), "counts": counts.contiguous()}, cache)
        meta_path.write_text(json.dumps({"key": key}))
    return x, counts
