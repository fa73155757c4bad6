"""Pooled corpus activations: equal to a direct pooling, float16 storage, resumable; token moments."""

from __future__ import annotations

import json

import pytest
import torch

from emolib.capture import pooled_means, token_activations
from emolib.study.activations import corpus_hash, load_pooled, neutral_token_moments, pool_corpus

TEXTS = [
    "The kettle clicked off and the kitchen went quiet except for the rain on the window.",
    "Short.",
    "She folded the letter twice, put it in her coat pocket, and walked out into the cold street.",
    "Numbers: one two three four five six seven eight nine ten eleven twelve thirteen fourteen.",
    "He counted the tiles on the ceiling while the printer warmed up, then counted them again.",
    "A long text that goes on " * 8,
]
RECORDS = [{"id": f"s{i}", "text": t} for i, t in enumerate(TEXTS)]


def test_pool_corpus_matches_direct_pooling(tiny, tmp_path):
    model, tok = tiny
    got = pool_corpus(model, tok, RECORDS, tmp_path / "a", model_id="tiny", start=4, batch_size=4, shard_size=4)
    ref = pooled_means(model, tok, TEXTS, start=4, batch_size=1)
    assert got.ids == [r["id"] for r in RECORDS]
    assert got.means.dtype == torch.float32 and got.means.shape == (6, 4, 64)
    assert torch.equal(got.n_tokens, ref.n_tokens)
    ok = ref.ok
    assert torch.isnan(got.means[~ok]).all()
    # float16 storage: relative error ~1e-3, never more
    err = (got.means[ok] - ref.means[ok]).abs().max() / ref.means[ok].abs().max()
    assert 0 < err < 2e-3
    assert torch.allclose(got.residual_norms, ref.residual_norms, rtol=1e-4)
    assert len(list((tmp_path / "a").glob("shard-*.safetensors"))) == 2
    assert got.take(["s3", "s0"]).ids == ["s3", "s0"]
    assert torch.equal(torch.nan_to_num(got.at(2)), torch.nan_to_num(got.means[:, 2]))


def test_pool_corpus_resumes_and_rejects_stale_settings(tiny, tmp_path):
    model, tok = tiny
    folder = tmp_path / "b"
    pool_corpus(model, tok, RECORDS[:3], folder, model_id="tiny", start=4, shard_size=2)
    first = sorted(p.name for p in folder.glob("shard-*"))
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*")}
    full = pool_corpus(model, tok, RECORDS, folder, model_id="tiny", start=4, shard_size=2)
    shards = sorted(p.name for p in folder.glob("shard-*"))
    assert first == ["shard-00000.safetensors", "shard-00001.safetensors"]
    assert len(shards) == 4  # 3 old records in 2 shards, 3 new ones in 2 more
    assert all(folder.joinpath(n).stat().st_mtime_ns == stamps[n] for n in first)  # not rewritten
    once = pool_corpus(model, tok, RECORDS, tmp_path / "c", model_id="tiny", start=4, shard_size=100)
    # other shard sizes mean other batches, so other padding: equal up to float16 storage rounding
    assert torch.allclose(torch.nan_to_num(full.means), torch.nan_to_num(once.means), rtol=2e-3, atol=1e-4)
    # another token offset: the old shards are stale and must be dropped
    again = pool_corpus(model, tok, RECORDS, folder, model_id="tiny", start=2, shard_size=100)
    assert len(list(folder.glob("shard-*"))) == 1
    assert json.loads((folder / "manifest.json").read_text())["start"] == 2
    assert (again.n_tokens >= full.n_tokens).all()
    assert load_pooled(folder).ids == [r["id"] for r in RECORDS]


def test_pool_corpus_errors(tiny, tmp_path):
    model, tok = tiny
    with pytest.raises(ValueError, match="unique"):
        pool_corpus(model, tok, [RECORDS[0], RECORDS[0]], tmp_path, model_id="tiny")
    with pytest.raises(FileNotFoundError, match="02_extract_vectors"):
        load_pooled(tmp_path / "nothing")
    assert corpus_hash(RECORDS) != corpus_hash(RECORDS[::-1])


@pytest.mark.parametrize("batch_size", [1, 4])
def test_token_moments_equal_explicit_covariance(tiny, batch_size):
    model, tok = tiny
    start, layers = 3, [1, 3]
    mom = neutral_token_moments(model, tok, TEXTS, layers=layers, start=start, batch_size=batch_size)
    toks = []
    for t in TEXTS:
        acts, _ = token_activations(model, tok, t, layers)
        toks.append(acts[start:])
    x = torch.cat(toks).double()  # [tokens, layers, width]
    assert mom.count == x.shape[0]
    for k in range(len(layers)):
        xk = x[:, k]
        cov = torch.cov(xk.T, correction=0)
        assert torch.allclose(mom.covariance()[k], cov, atol=1e-4 * float(cov.abs().max()))
        assert torch.allclose(mom.mean()[k], xk.mean(0), atol=1e-4)


def test_token_moments_text_means_equal_pooled_means(tiny):
    model, tok = tiny
    mom = neutral_token_moments(model, tok, TEXTS, layers=[0, 3], start=4, batch_size=3)
    ref = pooled_means(model, tok, TEXTS, layers=[0, 3], start=4)
    ok = ref.ok
    assert torch.isnan(mom.text_means[~ok]).all()
    assert torch.allclose(mom.text_means[ok], ref.means[ok], atol=1e-5)


def test_cached_token_moments_reuse_and_invalidate(tiny, tmp_path):
    from emolib.study.activations import cached_token_moments

    model, tok = tiny
    path = tmp_path / "m.safetensors"
    a = cached_token_moments(model, tok, RECORDS, path, model_id="tiny", start=3)
    stamp = path.stat().st_mtime_ns
    b = cached_token_moments(model, tok, RECORDS, path, model_id="tiny", start=3)
    assert path.stat().st_mtime_ns == stamp  # reused, not recomputed
    assert b.count == a.count
    assert torch.allclose(b.covariance(), a.covariance(), rtol=1e-5, atol=1e-7)
    assert torch.allclose(b.mean(), a.mean(), atol=1e-7)
    c = cached_token_moments(model, tok, RECORDS[:4], path, model_id="tiny", start=3)  # another corpus
    assert c.count < a.count and path.stat().st_mtime_ns != stamp
