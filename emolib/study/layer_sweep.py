"""Which layers carry usable emotion vectors? Held-out classification of stories, layer by layer.

Protocol (our choices, written down because the paper gives none for this check):

* **Topic-disjoint folds.** Topics, not stories, are split into ``n_folds`` groups; each story
  is tested once, by vectors computed from the stories of the *other* topic groups. So a
  test story's topic never appeared in training, and a vector cannot win by recognising the
  topic. Cross-validating (rather than one 80/20 split) matters when each emotion has only ~6
  stories: every story is used for testing, and each training set keeps ~80 % of them.
* **Nearest vector.** A held-out story mean, minus the training grand mean, is assigned the
  emotion whose vector has the highest cosine with it. Top-1 and top-5 accuracy, raw vectors
  and neutral-denoised ones. (Projecting the neutral components out of the vectors only is
  the same ranking as projecting them out of both, since the story's norm is common to all
  candidates.)
* **Logistic-regression probe** (sklearn, multinomial, on standardised story means): an upper
  reference for what a *trained* linear read-out gets from the same layer.
* **Chance**: ``k / n_emotions`` for top-k.

The default layer is chosen by :func:`choose_layer`: smooth the denoised nearest-vector top-1
curve over 3 adjacent layers, call every layer within ``frac`` (default 90 %) of the best
smoothed value the plateau, and take the plateau layer closest to two-thirds of the depth (the
paper's "mid-late" layer). This keeps the paper's choice when the data allow it and moves to
where the emotions are actually readable when they do not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from emolib.vectors import NeutralPCA, emotion_means, grand_mean_center, project_out


def topic_folds(topic_ids: Sequence, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold index per story such that no topic spans two folds.

    Topics are shuffled with ``seed`` and dealt round-robin. A story with no topic (``None``)
    is its own group. Fewer topics than folds is an error (a fold would be empty).
    """
    keys = [("topic", t) if t is not None else ("story", i) for i, t in enumerate(topic_ids)]
    uniq = list(dict.fromkeys(keys))
    if len(uniq) < n_folds:
        raise ValueError(f"{len(uniq)} distinct topics cannot fill {n_folds} topic-disjoint folds.")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(uniq))
    fold_of = {uniq[p]: k % n_folds for k, p in enumerate(perm)}
    return np.array([fold_of[k] for k in keys], dtype=int)


def _topk_hits(scores: torch.Tensor, truth: torch.Tensor, ks: Sequence[int]) -> dict[int, torch.Tensor]:
    order = scores.argsort(dim=-1, descending=True)
    return {k: (order[:, :k] == truth.unsqueeze(-1)).any(dim=-1) for k in ks}


def nearest_vector_hits(train_x: torch.Tensor, train_y: Sequence[str], test_x: torch.Tensor,
                        test_y: Sequence[str], basis: torch.Tensor | None = None,
                        ks: Sequence[int] = (1, 5), center: str = "train") -> dict[int, torch.Tensor]:
    """Top-k hits (bool per test story) of nearest-vector classification at one layer.

    Vectors are computed from ``train_x [n, width]`` (emotion means minus their mean, then
    ``basis`` projected out if given); candidates are the emotions present in training. A test
    story whose emotion has no training story counts as a miss. Test stories are centred on the
    training grand mean (``center="train"``), or on the plain mean of the test stories
    (``"test"``, label-free): across corpora by different writers the second removes the
    writer's constant style offset, which the first would leave in every test story.
    """
    means, names, _ = emotion_means(train_x, train_y)
    vecs, grand = grand_mean_center(means)
    if basis is not None:
        vecs = project_out(vecs, basis)
    vecs = vecs / vecs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    if center not in {"train", "test"}:
        raise ValueError(f"center must be 'train' or 'test', got {center!r}")
    a = test_x.float() - (grand if center == "train" else test_x.float().mean(0))
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    scores = a @ vecs.T
    pos = {e: i for i, e in enumerate(names)}
    truth = torch.tensor([pos.get(e, -1) for e in test_y])
    return _topk_hits(scores, truth, ks)


def probe_hits(train_x: torch.Tensor, train_y: Sequence[str], test_x: torch.Tensor, test_y: Sequence[str],
               ks: Sequence[int] = (1, 5), C: float = 1.0, max_iter: int = 300, seed: int = 0) -> dict[int, torch.Tensor]:
    """Top-k hits of a multinomial logistic-regression probe trained on standardised means.

    BLAS is limited to one thread during the fit: on a shared 2-core machine, multi-threaded
    BLAS on these small matrices was measured 25x slower than single-threaded.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    scaler = StandardScaler().fit(train_x.numpy())
    clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(scaler.transform(train_x.numpy()), np.asarray(train_y))
    scores = torch.as_tensor(clf.decision_function(scaler.transform(test_x.numpy())))
    if scores.dim() == 1:  # two classes: sklearn returns one column
        scores = torch.stack([-scores, scores], dim=-1)
    pos = {e: i for i, e in enumerate(clf.classes_)}
    truth = torch.tensor([pos.get(e, -1) for e in test_y])
    return _topk_hits(scores, truth, ks)


@dataclass
class LayerSweep:
    """Held-out accuracy per layer. ``top1[method][i]`` is for ``layers[i]``; methods are
    ``"raw"`` and ``"denoised"`` (nearest vector) and ``"probe"`` (logistic regression; NaN on
    layers where it was not run)."""

    layers: list[int]
    emotions: list[str]
    n_test: int
    n_folds: int
    top1: dict[str, list[float]]
    top5: dict[str, list[float]]
    chance_top1: float
    chance_top5: float
    n_removed: list[int] = field(default_factory=list)
    probe_layers: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def at(self, layer: int) -> dict[str, float]:
        i = self.layers.index(layer)
        out = {}
        for m in self.top1:
            out[f"{m}_top1"] = self.top1[m][i]
            out[f"{m}_top5"] = self.top5[m][i]
        return out


def layer_sweep(means: torch.Tensor, labels: Sequence[str], topics: Sequence, layers: Sequence[int],
                pca: NeutralPCA | None = None, threshold: float | None = None, n_folds: int = 5,
                probe_layers: Sequence[int] | None = None, probe_C: float = 1.0, seed: int = 0,
                voices: Sequence | None = None, n_voice_groups: int = 3) -> LayerSweep:
    """Cross-validated accuracy of emotion vectors at every layer, on stories whose topic (and,
    with ``voices``, whose narrator's voice) no training story shares.

    ``means [n_stories, layers, width]`` are pooled story means (NaN rows are dropped),
    ``labels`` their emotions, ``topics`` their topic ids. Without ``voices`` the folds are
    ``n_folds`` topic groups; with ``voices`` they are the topic-by-voice grid of
    :func:`grid_folds` (``n_folds`` topic groups x ``n_voice_groups``
    voice groups). ``probe_layers`` (default: all) limits the logistic-regression probe, the slow part.
    """
    import time

    t0 = time.perf_counter()
    x = torch.as_tensor(means).float()
    if x.dim() != 3 or x.shape[1] != len(layers):
        raise ValueError(f"means must be [stories, {len(layers)} layers, width] (one column per entry of layers), "
                         f"got shape {tuple(x.shape)}")
    ok = ~torch.isnan(x.reshape(x.shape[0], -1)).any(dim=1)
    keep = [i for i in range(x.shape[0]) if bool(ok[i])]
    x = x[keep]
    y = [labels[i] for i in keep]
    if voices is None:
        fold_of = topic_folds([topics[i] for i in keep], n_folds, seed)
        splits = [(np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)) for f in range(n_folds)]
    else:
        splits = grid_folds([topics[i] for i in keep], [voices[i] for i in keep], n_folds, n_voice_groups, seed)
    emotions = list(dict.fromkeys(y))
    probe_set = set(layers if probe_layers is None else probe_layers)
    ks = (1, 5)
    res = {m: {k: [] for k in ks} for m in ("raw", "denoised", "probe")}
    n_removed = []
    for li, layer in enumerate(layers):
        basis = pca.basis(layer, threshold) if pca is not None else None
        n_removed.append(int(basis.shape[0]) if basis is not None else 0)
        hits = {m: {k: torch.zeros(len(y), dtype=torch.bool) for k in ks} for m in res}
        for tr, te in splits:
            ytr, yte = [y[i] for i in tr], [y[i] for i in te]
            xtr, xte = x[tr, li], x[te, li]
            methods = {"raw": None, "denoised": basis} if basis is not None else {"raw": None}
            for m, b in methods.items():
                h = nearest_vector_hits(xtr, ytr, xte, yte, b, ks)
                for k in ks:
                    hits[m][k][te] = h[k]
            if layer in probe_set:
                h = probe_hits(xtr, ytr, xte, yte, ks, C=probe_C, seed=seed)
                for k in ks:
                    hits["probe"][k][te] = h[k]
        for m in res:
            ran = m == "raw" or (m == "denoised" and basis is not None) or (m == "probe" and layer in probe_set)
            for k in ks:
                res[m][k].append(float(hits[m][k].float().mean()) if ran else float("nan"))
    n_e = len(emotions)
    return LayerSweep(layers=list(layers), emotions=emotions, n_test=len(y), n_folds=len(splits),
                      top1={m: res[m][1] for m in res}, top5={m: res[m][5] for m in res},
                      chance_top1=1.0 / n_e, chance_top5=min(5, n_e) / n_e, n_removed=n_removed,
                      probe_layers=sorted(probe_set), seconds=time.perf_counter() - t0)


def choose_layer(sweep: LayerSweep, n_blocks: int, method: str = "denoised", frac: float = 0.9,
                 depth: float = 2 / 3) -> int:
    """The default layer: the plateau layer closest to ``depth`` of the model (see module doc).

    The curve is the ``method`` nearest-vector top-1 accuracy (``"raw"`` if no denoised values),
    smoothed by a 3-layer moving average (edges use the available neighbours); the plateau is
    every layer whose smoothed value is at least ``frac`` times the best smoothed value.
    """
    acc = np.asarray(sweep.top1.get(method, sweep.top1["raw"]), dtype=float)
    if np.isnan(acc).all():
        acc = np.asarray(sweep.top1["raw"], dtype=float)
    smooth = np.array([np.nanmean(acc[max(0, i - 1):i + 2]) for i in range(len(acc))])
    best = np.nanmax(smooth)
    plateau = [sweep.layers[i] for i in range(len(acc)) if smooth[i] >= frac * best]
    target = depth * n_blocks
    return int(min(plateau, key=lambda layer: (abs(layer - target), layer)))


@dataclass
class CorpusComparison:
    """Vectors from two corpora (e.g. the model's own stories vs the project's reference corpus).

    ``cosine[e]`` is the cosine between the two vectors of emotion ``e`` at ``layer`` (both sets
    computed on the shared emotions only, so they are centred on the same emotion set);
    ``a_on_b`` / ``b_on_a`` the top-1/top-5 accuracy of each corpus's vectors on every story of
    the other corpus, over the shared emotions, per layer.
    """

    name_a: str
    name_b: str
    shared: list[str]
    only_a: list[str]
    only_b: list[str]
    layer: int
    cosine: dict[str, float]
    layers: list[int]
    a_on_b: dict[str, list[float]]
    b_on_a: dict[str, list[float]]
    n_a: int
    n_b: int
    chance_top1: float
    center: str = "test"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_corpora(means_a: torch.Tensor, labels_a: Sequence[str], means_b: torch.Tensor, labels_b: Sequence[str],
                    layers: Sequence[int], layer: int, pca: NeutralPCA | None = None, threshold: float | None = None,
                    name_a: str = "generated", name_b: str = "reference", center: str = "test") -> CorpusComparison:
    """Cosine per emotion between two corpora's vectors at ``layer``, and cross-corpus accuracy.

    Only emotions present in both corpora are compared; the others are listed. ``pca`` (if
    given) denoises both sets the same way. ``center`` is passed to :func:`nearest_vector_hits`
    (default ``"test"``: each corpus's stories are centred on their own mean).
    """
    xa, xb = torch.as_tensor(means_a).float(), torch.as_tensor(means_b).float()

    def usable(x, lab):
        ok = ~torch.isnan(x.reshape(x.shape[0], -1)).any(dim=1)
        return [i for i in range(x.shape[0]) if bool(ok[i])], lab

    ia, _ = usable(xa, labels_a)
    ib, _ = usable(xb, labels_b)
    set_a = list(dict.fromkeys(labels_a[i] for i in ia))
    set_b = list(dict.fromkeys(labels_b[i] for i in ib))
    shared = [e for e in set_a if e in set(set_b)]
    if len(shared) < 2:
        raise ValueError(f"The corpora share {len(shared)} emotion(s) with usable stories; need at least 2.")
    sa = [i for i in ia if labels_a[i] in set(shared)]
    sb = [i for i in ib if labels_b[i] in set(shared)]
    ya, yb = [labels_a[i] for i in sa], [labels_b[i] for i in sb]
    li = list(layers).index(layer)
    basis = pca.basis(layer, threshold) if pca is not None else None

    def vectors(x, y, lpos, b):
        m, names, _ = emotion_means(x[:, lpos], y, shared)
        v, _ = grand_mean_center(m)
        return project_out(v, b) if b is not None else v

    va, vb = vectors(xa[sa], ya, li, basis), vectors(xb[sb], yb, li, basis)
    cos = torch.nn.functional.cosine_similarity(va, vb, dim=-1)
    a_on_b = {"top1": [], "top5": []}
    b_on_a = {"top1": [], "top5": []}
    for lp, lay in enumerate(layers):
        b = pca.basis(lay, threshold) if pca is not None else None
        h = nearest_vector_hits(xa[sa, lp], ya, xb[sb, lp], yb, b, center=center)
        a_on_b["top1"].append(float(h[1].float().mean()))
        a_on_b["top5"].append(float(h[5].float().mean()))
        h = nearest_vector_hits(xb[sb, lp], yb, xa[sa, lp], ya, b, center=center)
        b_on_a["top1"].append(float(h[1].float().mean()))
        b_on_a["top5"].append(float(h[5].float().mean()))
    return CorpusComparison(name_a=name_a, name_b=name_b, shared=shared,
                            only_a=[e for e in set_a if e not in set(shared)],
                            only_b=[e for e in set_b if e not in set(shared)], layer=layer,
                            cosine={e: float(c) for e, c in zip(shared, cos)}, layers=list(layers),
                            a_on_b=a_on_b, b_on_a=b_on_a, n_a=len(sa), n_b=len(sb), chance_top1=1.0 / len(shared),
                            center=center)


def _groups(keys: Sequence, n: int, rng: np.random.Generator) -> dict[Any, int]:
    uniq = sorted(set(keys), key=str)
    if len(uniq) < n:
        raise ValueError(f"{len(uniq)} distinct values cannot fill {n} groups.")
    perm = rng.permutation(len(uniq))
    return {uniq[p]: k % n for k, p in enumerate(perm)}


def grid_folds(topics: Sequence, voices: Sequence, n_topic_groups: int = 5, n_voice_groups: int = 3,
               seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(train_idx, test_idx), ...]``, one fold per (topic group, voice group) (topics dealt into groups, voices into groups; a test cell is
    trained on the stories outside *both* its topic group and its voice group)."""
    if len(topics) != len(voices):
        raise ValueError(f"{len(topics)} topics but {len(voices)} voices.")
    rng = np.random.default_rng(seed)
    tg = _groups(topics, n_topic_groups, rng)
    vg = _groups(voices, n_voice_groups, rng)
    t = np.array([tg[x] for x in topics])
    v = np.array([vg[x] for x in voices])
    # A dimension with a single group (one voice, or voices unknown) cannot be held out: excluding its
    # group would leave nothing to train on, so only the other dimension is held out then.
    hold_t = len(set(tg.values())) > 1
    hold_v = len(set(vg.values())) > 1
    folds = []
    for i in range(n_topic_groups):
        for j in range(n_voice_groups):
            test = np.nonzero((t == i) & (v == j))[0]
            train = np.nonzero(((t != i) | (not hold_t)) & ((v != j) | (not hold_v)))[0]
            if len(test):
                folds.append((train, test))
    return folds
