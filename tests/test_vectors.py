"""Vector maths on synthetic activations with a planted answer, the artifact's files, GGUF export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emolib.vectors import (
    EmotionVectors,
    compute_vectors,
    denoise,
    emotion_means,
    fit_neutral_pca,
    grand_mean_center,
    n_components_for,
    neutral_pca_from_moments,
    project_out,
    read_gguf_control_vector,
)

EMOS = ["happy", "sad", "afraid", "calm"]


def planted_corpus(width=16, n_layers=2, per_emotion=(3, 5, 2, 7), seed=0, noise=0.0):
    """Stories = common offset + planted emotion direction (+ noise); unequal counts per emotion."""
    g = torch.Generator().manual_seed(seed)
    offset = torch.randn(n_layers, width, generator=g) * 10
    dirs = torch.randn(len(EMOS), n_layers, width, generator=g)
    rows, labels = [], []
    for e, n in enumerate(per_emotion):
        for _ in range(n):
            rows.append(offset + dirs[e] + noise * torch.randn(n_layers, width, generator=g))
            labels.append(EMOS[e])
    return torch.stack(rows), labels, offset, dirs


def test_grand_mean_centering_weights_emotions_equally():
    x, labels, offset, dirs = planted_corpus()
    vec = compute_vectors(x, labels, layers=[3, 7], norms=[1.0, 2.0])
    want = dirs - dirs.mean(0, keepdim=True)  # equal weights, whatever the story counts
    assert vec.emotions == EMOS
    assert torch.allclose(vec.vectors, want.transpose(0, 1), atol=1e-5)
    assert torch.allclose(vec.vectors.sum(dim=1), torch.zeros(2, 16), atol=1e-5)
    # the story-weighted mean would differ: check the test can fail
    story_weighted = x.mean(0)
    assert not torch.allclose(vec.center, story_weighted, atol=1e-3)
    assert torch.allclose(vec.center, offset + dirs.mean(0), atol=1e-5)
    assert vec.meta["stories_per_emotion"] == {"happy": 3, "sad": 5, "afraid": 2, "calm": 7}


def test_grand_mean_center_function():
    m = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    c, g = grand_mean_center(m)
    assert torch.equal(g, torch.tensor([2.0, 4.0]))
    assert torch.equal(c, torch.tensor([[-1.0, -2.0], [1.0, 2.0]]))


def test_emotion_means_skip_nan_and_reject_missing():
    x = torch.tensor([[1.0], [float("nan")], [3.0], [5.0]])
    means, names, counts = emotion_means(x, ["a", "a", "a", "b"])
    assert names == ["a", "b"] and counts.tolist() == [2, 1]
    assert torch.equal(means, torch.tensor([[2.0], [5.0]]))
    with pytest.raises(ValueError, match="No usable story for emotion 'c'"):
        emotion_means(x, ["a", "a", "a", "b"], emotions=["a", "b", "c"])


def test_fifty_percent_rule():
    assert n_components_for([0.3, 0.15, 0.1, 0.45]) == 3  # not sorted on purpose: cumulative in order
    assert n_components_for([0.5, 0.3, 0.2]) == 1  # exactly 50 % is enough
    assert n_components_for([0.49, 0.3, 0.21]) == 2
    assert n_components_for([0.2] * 5, threshold=0.0) == 0
    assert n_components_for([0.2] * 5, threshold=1.0) == 5


def neutral_with_nuisance(width=16, n=400, seed=1):
    """Neutral activations: a big nuisance variance along one axis, small isotropic noise."""
    g = torch.Generator().manual_seed(seed)
    nuisance = torch.zeros(width)
    nuisance[5] = 1.0
    x = torch.randn(n, width, generator=g) * 0.1 + torch.randn(n, 1, generator=g) * 5.0 * nuisance
    return x, nuisance


def test_denoising_removes_planted_nuisance_direction():
    width = 16
    neutral, nuisance = neutral_with_nuisance(width)
    pca = fit_neutral_pca(neutral.unsqueeze(1), layers=[0])
    assert pca.n_removed() == [1]
    assert abs(float(pca.components[0][0] @ nuisance)) > 0.99
    x, labels, _, dirs = planted_corpus(width=width, n_layers=1)
    contaminated = x + torch.tensor([3.0 * (i % 3) for i in range(len(labels))]).view(-1, 1, 1) * nuisance
    raw = compute_vectors(contaminated, labels, layers=[0], norms=[1.0])
    den = compute_vectors(contaminated, labels, layers=[0], norms=[1.0], neutral=pca)
    assert (raw.vectors[0] @ nuisance).abs().max() > 0.5  # the planted contamination is there
    assert (den.vectors[0] @ nuisance).abs().max() < 0.01  # and gone after denoising (up to PCA estimation error)
    clean = project_out((dirs - dirs.mean(0))[:, 0], nuisance.view(1, -1))
    assert torch.allclose(den.vectors[0], clean, atol=1e-2)
    assert den.meta["denoise"]["n_removed"] == {"0": 1}
    assert den.meta["denoise"]["pca_mode"] == "dialogue"
    # threshold 0 = no denoising
    assert torch.equal(denoise(raw, pca, threshold=0.0).vectors, raw.vectors)


def test_token_pca_from_moments_matches_sklearn():
    from sklearn.decomposition import PCA

    x, _ = neutral_with_nuisance(width=12, n=300)
    x = x + torch.linspace(0, 1, 12) * torch.randn(300, 1)  # a second structured axis
    x = x + 1000.0  # large common offset: the moments must not lose precision
    shift = x[:50].mean(0)
    xs = (x - shift).double()
    pca_m = neutral_pca_from_moments(300, xs.sum(0, keepdim=True), (xs.T @ xs).unsqueeze(0), layers=[4],
                                     max_components=12)
    sk = PCA(svd_solver="full").fit(x.double().numpy())
    assert np.allclose(pca_m.explained[0].numpy(), sk.explained_variance_ratio_, atol=1e-6)
    for k in range(3):
        assert abs(float(pca_m.components[0][k].double() @ torch.as_tensor(sk.components_[k]))) > 0.999
    assert pca_m.mode == "token" and pca_m.n_samples == 300


def make_vectors(default_layer=3):
    g = torch.Generator().manual_seed(0)
    return EmotionVectors(vectors=torch.randn(2, 4, 8, generator=g), emotions=["happy", "sad", "at ease", "grief-stricken"],
                          layers=[3, 5], norms=torch.tensor([2.5, 4.0]), default_layer=default_layer,
                          meta={"model": {"name": "tiny", "model_type": "llama"}, "start": 50},
                          center=torch.randn(2, 8, generator=g))


def test_save_load_roundtrip_bit_exact(tmp_path):
    v = make_vectors()
    path = v.save(tmp_path / "v.safetensors")
    w = EmotionVectors.load(path)
    assert torch.equal(w.vectors, v.vectors) and torch.equal(w.norms, v.norms) and torch.equal(w.center, v.center)
    assert w.emotions == v.emotions and w.layers == v.layers and w.default_layer == 3 and w.meta == v.meta
    v2 = EmotionVectors(vectors=v.vectors, emotions=v.emotions, layers=v.layers, norms=v.norms)
    w2 = EmotionVectors.load(v2.save(tmp_path / "v2.safetensors"))
    assert w2.center is None and w2.default_layer is None


def test_wrong_file_width_and_name_errors(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an emolib EmotionVectors file"):
        EmotionVectors.load(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file at all")
    with pytest.raises(ValueError, match="not a safetensors file"):
        EmotionVectors.load(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="02_extract_vectors"):
        EmotionVectors.load(tmp_path / "missing.safetensors")
    v = make_vectors()
    with pytest.raises(ValueError, match="width 7 but the vectors have width 8"):
        v.cosine(torch.zeros(3, 7))
    with pytest.raises(KeyError, match="Did you mean: happy"):
        v.vector("hapy")
    with pytest.raises(KeyError, match="Unknown emotion 'sadd'"):
        v.direction("happy - sadd")
    with pytest.raises(ValueError, match="center must be"):
        EmotionVectors(vectors=v.vectors, emotions=v.emotions, layers=v.layers, norms=v.norms, center=torch.zeros(8))


def test_centered_cosine_and_arithmetic():
    v = make_vectors()
    a = v.center[0] + 2.0 * v.vector("sad", 3)
    cos = v.cosine(a, layer=3, center=True)
    assert int(cos.argmax()) == v.index("sad") and abs(float(cos[v.index("sad")]) - 1.0) < 1e-5
    d = v.direction("at ease - grief-stricken")
    assert torch.allclose(d, v.vector("at ease") - v.vector("grief-stricken"))


def test_gguf_export_reads_back(tmp_path):
    v = make_vectors()
    path = v.to_gguf(tmp_path / "sad.gguf", "sad - happy", layers=[3, 5], strength=0.5)
    dirs, fields = read_gguf_control_vector(path)
    assert sorted(dirs) == [3, 5]
    assert fields["controlvector.model_hint"] == "llama" and fields["controlvector.layer_count"] == 2
    for layer in (3, 5):
        d = v.direction("sad - happy", layer)
        want = 0.5 * v.norm_at(layer) * d / d.norm()
        assert torch.allclose(dirs[layer], want, atol=1e-6)
    raw_path = v.to_gguf(tmp_path / "raw.gguf", "happy", layers=5, scale="raw")
    raw, _ = read_gguf_control_vector(raw_path)
    assert torch.equal(raw[5], v.vector("happy", 5))
    with pytest.raises(ValueError, match="block 0"):
        EmotionVectors(vectors=v.vectors, emotions=v.emotions, layers=[0, 5], norms=v.norms).to_gguf(
            tmp_path / "bad.gguf", "happy", layers=[0])


def test_remove_corpus_offsets_cancels_writer_style():
    from emolib.vectors import remove_corpus_offsets

    x, labels, _, dirs = planted_corpus(per_emotion=(4, 4, 4, 4))
    # corpus b covers only two emotions and carries a big style offset
    xb = x[:8] + 7.0
    allx = torch.cat([x, xb])
    lab = labels + labels[:8]
    corp = ["a"] * len(labels) + ["b"] * 8
    naive = compute_vectors(allx, lab, layers=[0, 1], norms=[1.0, 1.0])
    fixed_x, offsets = remove_corpus_offsets(allx, lab, corp)
    fixed = compute_vectors(fixed_x, lab, layers=[0, 1], norms=[1.0, 1.0])
    want = (dirs - dirs.mean(0, keepdim=True)).transpose(0, 1)
    assert (naive.vectors - want).abs().max() > 1.0  # the offset leaks into happy/sad
    assert torch.allclose(fixed.vectors, want, atol=1e-4)
    assert torch.allclose(offsets["b"], torch.full((2, 16), 7.0), atol=1e-4) and float(offsets["a"].abs().max()) == 0
