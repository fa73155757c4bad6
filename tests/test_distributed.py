"""Ray engine: a 2-worker local cluster writes exactly what one process writes, survives a killed
worker, resumes after a failed run, and pools within 1e-5 of one process. On the tiny model.

The Ray tests skip (with a reason) when the optional `ray` extra is not installed; `make test`
(and so CI) installs it. One local cluster (2 CPUs, loopback only, no dashboard) serves the module.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from emolib.engines import make_engine
from emolib.engines.ray_engine import RAY_MISSING, RayEngine, WorkerFailed
from emolib.engines.sampling import SamplingSettings
from emolib.study.activations import load_pooled, pool_corpus
from emolib.study.generation import Prompt, generate_to_store
from emolib.study.store import JsonlStore

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="the optional `ray` extra is not installed (pip install -e '.[ray]')")

SETTINGS = SamplingSettings(max_new_tokens=12, temperature=0.9, top_p=0.95, batch_size=3)
TOPICS = ["a lighthouse", "the night shift", "a lost key", "moving house", "a wedding", "the first snow",
          "a broken phone", "an exam", "the harbour", "a long queue", "a garden", "the last bus"]


def _prompts(tok):
    out = []
    for i, topic in enumerate(TOPICS * 2):  # 24 prompts of varied length: 8 batches of 3
        text = tok.apply_chat_template([{"role": "user", "content": f"Write about {topic}." + " Briefly." * (i % 4)}],
                                       tokenize=False, add_generation_prompt=True)
        out.append(Prompt(id=f"q{i:02d}", text=text, meta={"kind": "story", "topic_id": i}))
    return out


RECORDS = [{"id": f"t{i}", "text": f"Story {i}: " + "the rain kept falling on the quiet street " * (1 + i % 5)}
           for i in range(22)]


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray", reason="the optional `ray` extra is not installed (pip install -e '.[ray]')")
    import ray

    from emolib.engines.ray_engine import connect

    connect(num_cpus=2, object_store_memory=256 * 1024**2, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def single(tiny, tmp_path_factory):
    """The single-process reference run: its JSONL store, byte for byte."""
    model, tok = tiny
    path = tmp_path_factory.mktemp("single") / "raw.jsonl"
    generate_to_store(model, tok, _prompts(tok), path, SETTINGS, seed=7, writer="tiny", progress=False)
    return path


def _engine(**kw):
    return RayEngine("tiny-random", workers=2, **kw)


@needs_ray
def test_two_workers_write_the_single_process_records(cluster, tiny, single, tmp_path):
    _, tok = tiny
    path = tmp_path / "raw.jsonl"
    with _engine() as eng:
        rep = generate_to_store(None, tok, _prompts(tok), path, SETTINGS, seed=7, writer="tiny", progress=False,
                                engine=eng)
        stats = cluster.get([w.stats.remote() for w in eng.workers])
    assert rep.engine == "ray" and rep.n_generated == 24 and rep.n_batches_run == 8
    assert path.read_bytes() == single.read_bytes()  # same records, same order, same bytes
    assert len({s["pid"] for s in stats}) == 2 and all(s["calls"] >= 2 for s in stats)  # both workers did batches
    by_id = sorted(JsonlStore(path).read(), key=lambda r: r["id"])
    assert by_id == sorted(JsonlStore(single).read(), key=lambda r: r["id"])


@needs_ray
def test_killed_worker_is_restarted_and_its_batch_retried(cluster, tiny, single, tmp_path):
    _, tok = tiny
    path = tmp_path / "raw.jsonl"
    marker = tmp_path / "worker-killed"
    with _engine(chaos=str(marker), max_restarts=2) as eng:
        before = {s["pid"] for s in cluster.get([w.stats.remote() for w in eng.workers])}
        rep = generate_to_store(None, tok, _prompts(tok), path, SETTINGS, seed=7, writer="tiny", progress=False,
                                engine=eng)
        after = {s["pid"] for s in cluster.get([w.stats.remote() for w in eng.workers])}
    assert marker.exists(), "the failure drill did not fire: no worker was killed"
    assert len(after - before) == 1  # exactly one worker process died and was replaced
    recs = JsonlStore(path).read()
    assert len(recs) == len({r["id"] for r in recs}) == 24 and rep.n_generated == 24
    assert path.read_bytes() == single.read_bytes()


@needs_ray
def test_run_stopped_by_a_killed_worker_resumes_without_loss_or_duplicates(cluster, tiny, single, tmp_path):
    _, tok = tiny
    path = tmp_path / "raw.jsonl"
    with _engine(chaos=str(tmp_path / "worker-killed"), max_restarts=0) as eng:  # no retries: the run stops
        with pytest.raises(WorkerFailed, match="rerun to resume"):
            generate_to_store(None, tok, _prompts(tok), path, SETTINGS, seed=7, writer="tiny", progress=False,
                              engine=eng)
    partial = path.read_bytes() if path.exists() else b""
    assert single.read_bytes().startswith(partial) and len(partial) < len(single.read_bytes())
    n_before = len(JsonlStore(path).read())
    with _engine() as eng:
        rep = generate_to_store(None, tok, _prompts(tok), path, SETTINGS, seed=7, writer="tiny", progress=False,
                                engine=eng)
    assert rep.n_done_before == n_before and rep.n_generated == 24 - n_before
    recs = JsonlStore(path).read()
    assert len(recs) == len({r["id"] for r in recs}) == 24
    assert path.read_bytes() == single.read_bytes()


@needs_ray
def test_sharded_pooled_capture_equals_single_process(cluster, tiny, tmp_path):
    model, tok = tiny
    kw = dict(model_id="tiny", start=3, batch_size=4, shard_size=5, max_length=64)
    ref = pool_corpus(model, tok, RECORDS, tmp_path / "single", **kw)
    with _engine() as eng:
        got = pool_corpus(None, tok, RECORDS, tmp_path / "ray", engine=eng, **kw)
        # resuming: two more records go into one new shard, the five old shards are kept
        more = RECORDS + [{"id": "extra1", "text": "One more story about the harbour at dusk."},
                          {"id": "extra2", "text": "And another one, about a cat on a warm roof."}]
        grown = pool_corpus(None, tok, more, tmp_path / "ray", engine=eng, **kw)
    assert got.ids == ref.ids and torch.equal(got.n_tokens, ref.n_tokens)
    assert (torch.nan_to_num(got.means) - torch.nan_to_num(ref.means)).abs().max() <= 1e-5
    assert torch.allclose(got.residual_norms, ref.residual_norms, atol=1e-5, rtol=0)
    shard_ids = [_meta(p)["ids"] for p in sorted((tmp_path / "ray").glob("shard-*.safetensors"))]
    assert shard_ids[:5] == [_meta(p)["ids"] for p in sorted((tmp_path / "single").glob("shard-*"))]
    assert shard_ids[5] == ["extra1", "extra2"] and load_pooled(tmp_path / "ray").ids == grown.ids
    # shards hold no clock time: the cluster's shards are the single process's, byte for byte
    for p in sorted((tmp_path / "single").glob("shard-*")):
        assert (tmp_path / "ray" / p.name).read_bytes() == p.read_bytes(), p.name


def _meta(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["shard"])


@needs_ray
def test_notebooks_01_02_on_ray_write_what_a_local_run_writes(cluster, tmp_path, monkeypatch):
    """The papermill parameter `engine`: the smoke profile's 01 and 02, once local, once on the
    test's cluster (joined through $RAY_ADDRESS), give the same raw stories and pooled means."""
    from emolib.pipeline import run_pipeline

    monkeypatch.setenv("RAY_ADDRESS", cluster.get_runtime_context().gcs_address)
    only = ["01", "02"]
    run_pipeline("smoke", run=tmp_path / "local", only=only, report=False)
    res = run_pipeline("smoke", run=tmp_path / "ray", only=only, report=False, sets=["engine=ray", "ray_workers=2"])
    assert [r.status for r in res] == ["ok", "ok"]
    for name in ("raw_stories.jsonl", "raw_neutral.jsonl"):
        assert (tmp_path / "ray" / "stories" / name).read_bytes() == (tmp_path / "local" / "stories" / name).read_bytes()
    a = load_pooled(tmp_path / "local" / "activations" / "reference_story")
    b = load_pooled(tmp_path / "ray" / "activations" / "reference_story")
    assert a.ids == b.ids and torch.equal(torch.nan_to_num(a.means), torch.nan_to_num(b.means))
    thr = json.loads((tmp_path / "ray" / "stories" / "throughput.json").read_text())
    assert thr["engine"] == "ray"
    # where a stage ran is not part of what it computed: the local folder is up to date for engine=ray
    again = run_pipeline("smoke", run=tmp_path / "local", only=only, report=False, sets=["engine=ray"])
    assert [r.status for r in again] == ["skipped", "skipped"]


@needs_ray
def test_workers_that_cannot_be_placed_fail_with_a_message(cluster):
    eng = RayEngine("tiny-random", workers=1, cpus_per_worker=3, start_timeout=3)  # the cluster has 2 CPUs
    with pytest.raises(WorkerFailed, match="did not start within 3 s"):
        eng.start()
    assert eng._actors == []
    with pytest.raises(WorkerFailed, match="no room for one worker"):
        RayEngine("tiny-random", gpus_per_worker=1).start()  # workers=0: fit to the cluster, which has no GPU


# ---- no cluster needed ---------------------------------------------------------------------------
def test_engine_names():
    assert make_engine("local", "tiny-random") is None and make_engine("", "x") is None
    assert make_engine(None, "x") is None
    eng = make_engine("ray", "tiny-random", workers=3)
    assert isinstance(eng, RayEngine) and eng.address is None and eng.n_workers == 3
    assert make_engine("ray:auto", "m").address == "auto"
    assert make_engine("ray:10.0.0.5:6379", "m").address == "10.0.0.5:6379"
    assert make_engine("ray://head:10001", "m").address == "ray://head:10001"
    assert make_engine(eng, "other") is eng
    with pytest.raises(ValueError, match="Unknown engine"):
        make_engine("spark", "m")


def test_missing_ray_is_a_clear_message(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(ImportError) as err:
        RayEngine("tiny-random", workers=1).start()
    assert str(err.value) == RAY_MISSING and ".[ray]" in RAY_MISSING


def test_no_model_and_no_engine_is_an_error(tiny, tmp_path):
    _, tok = tiny
    with pytest.raises(ValueError, match="No model and no engine"):
        generate_to_store(None, tok, _prompts(tok)[:2], tmp_path / "x.jsonl", SETTINGS, seed=0, writer="w",
                          progress=False)
