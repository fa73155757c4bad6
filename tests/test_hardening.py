"""Hardening (issue 19): every probe of a careful user, one test each (numbered as in the issue).

Each test failed on the code before the issue: data was deleted, two writers corrupted a store,
errors had no place, typos were accepted, crashes came from deep inside transformers, NaN passed
silently, long texts were cut without a word, and one bad submission stopped a class's grading.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from emolib.capture import pooled_means, token_activations
from emolib.chat import encode_chat
from emolib.engines.sampling import SamplingSettings
from emolib.models import ModelLoadError, load_model
from emolib.monitor.scoring import Monitor
from emolib.pipeline import PipelineError, run_pipeline
from emolib.steering import steer
from emolib.study.activations import pool_corpus
from emolib.study.generation import Prompt, generate_to_store
from emolib.study.locks import LockedError, exclusive, lock_path_for
from emolib.study.store import JsonlStore, StoreError, repair
from emolib.vectors import EmotionVectors

REPO = Path(__file__).resolve().parent.parent
RECORDS = [{"id": f"s{i}", "text": f"Story number {i} about a quiet afternoon by the river and a kettle. " * 3}
           for i in range(5)]


def _holder(target: Path, seconds: float = 30.0) -> subprocess.Popen:
    """Another process that holds the writer lock of ``target`` until killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from emolib.study.locks import exclusive
        with exclusive({str(target)!r}, what="test holder"):
            print("locked", flush=True)
            time.sleep({seconds})
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


# ---- 1. data loss ----------------------------------------------------------------------------------
def test_1_pooling_never_deletes_a_folder_it_did_not_make(tiny, tmp_path):
    model, tok = tiny
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"project": "someone else"}')
    (folder / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match="did not write"):
        pool_corpus(model, tok, RECORDS, folder, model_id="tiny", start=4)
    assert (folder / "thesis.tex").read_text() == "years of work"
    assert json.loads((folder / "manifest.json").read_text()) == {"project": "someone else"}


def test_1_stale_settings_remove_only_our_shards(tiny, tmp_path):
    model, tok = tiny
    folder = tmp_path / "acts"
    pool_corpus(model, tok, RECORDS, folder, model_id="tiny", start=4, shard_size=2)
    (folder / "notes.txt").write_text("keep me")
    assert len(list(folder.glob("shard-*"))) == 3
    pool_corpus(model, tok, RECORDS, folder, model_id="tiny", start=2, shard_size=100)
    assert len(list(folder.glob("shard-*"))) == 1
    assert (folder / "notes.txt").read_text() == "keep me"


# ---- 2. one writer -----------------------------------------------------------------------------
def test_2_a_second_writer_of_a_store_fails_at_once_naming_the_holder(tiny, tmp_path):
    model, tok = tiny
    store = tmp_path / "stories.jsonl"
    holder = _holder(store)
    try:
        prompts = [Prompt(f"p{i}", f"Tell me about day {i}.") for i in range(4)]
        t0 = time.perf_counter()
        with pytest.raises(LockedError, match=f"pid {holder.pid}"):
            generate_to_store(model, tok, prompts, store, SamplingSettings(max_new_tokens=3, batch_size=2), seed=0,
                              writer="tiny", progress=False)
        assert time.perf_counter() - t0 < 5  # fails at once, never waits
        assert not store.exists() or store.read_text() == ""
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock is gone with it (flock), and the takeover is reported
    with pytest.warns(UserWarning, match="no longer running"):
        with exclusive(store):
            pass


def test_2_a_second_pipeline_on_the_same_run_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = _holder(run)
    try:
        with pytest.raises(PipelineError, match="being written by another process"):
            run_pipeline("smoke", run=run, report=False)
        assert not (run / "stages").exists()  # refused before any stage started
    finally:
        holder.kill()
        holder.wait()


def test_2_locks_nest_in_one_process_and_are_released(tmp_path):
    target = tmp_path / "x.jsonl"
    with exclusive(target), exclusive(target):
        pass
    with exclusive(target):
        pass
    assert lock_path_for(target).name == "x.jsonl.lock"
    assert lock_path_for(tmp_path).name == ".emolib.lock"


# ---- 3. store errors with a place --------------------------------------------------------------
def _store(tmp_path, lines: list[bytes]) -> Path:
    p = tmp_path / "s.jsonl"
    p.write_bytes(b"".join(lines))
    return p


@pytest.mark.parametrize("bad, why", [
    (b"garbage\n", "not JSON"),
    (b'{"id": "b", "x": \n', "not JSON"),
    (b'{"id": "b", "t": "\xff\xfe"}\n', "not UTF-8"),
    (b'["a list"]\n', "not a record"),
    (b'{"id": "a", "x": 9}\n', "id 'a' already on line 1"),
])
def test_3_a_bad_line_is_named_with_path_and_line(tmp_path, bad, why):
    p = _store(tmp_path, [b'{"id": "a"}\n', bad, b'{"id": "c"}\n'])
    with pytest.raises(StoreError, match=rf"s\.jsonl, line 2: {why}.*emolib\.study\.store repair"):
        JsonlStore(p).read()


def test_3_a_torn_last_line_is_reported_not_cut_by_reading(tmp_path):
    p = _store(tmp_path, [b'{"id": "a"}\n', b'{"id": "b"', ])
    before = p.read_bytes()
    p.chmod(0o444)  # reading a read-only store with a torn tail used to fail (reading rewrote it)
    try:
        with pytest.warns(UserWarning, match="incomplete"):
            assert [r["id"] for r in JsonlStore(p).read()] == ["a"]
        assert p.read_bytes() == before
    finally:
        p.chmod(0o644)
    JsonlStore(p).append([{"id": "b", "x": 1}])  # the next write cuts it
    assert [r["id"] for r in JsonlStore(p).read()] == ["a", "b"]
    assert p.read_bytes().count(b"\n") == 2


def test_3_repair_moves_bad_lines_to_a_side_file_and_loses_nothing(tmp_path):
    p = _store(tmp_path, [b'{"id": "a"}\n', b"garbage\n", b'{"id": "a", "again": 1}\n', b'{"id": "c"}\n', b'{"id'])
    out = repair(p)
    assert out["kept"] == 2 and out["moved"] == 3
    assert [r["id"] for r in JsonlStore(p).read()] == ["a", "c"]
    side = Path(out["side_file"]).read_bytes()
    assert b"garbage" in side and b'"again": 1' in side and b'{"id' in side
    res = subprocess.run([sys.executable, "-m", "emolib.study.store", "check", str(p)], capture_output=True, text=True)
    assert res.returncode == 0 and "2 records" in res.stdout


# ---- 4. typos and types in profile overrides ------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("01_generate_stories.batchsize=8", "has no parameter 'batchsize'. Did you mean: batch_size"),
    ("seed=abc", "seed expects an integer"),
    ("02_extract_vectors.layer=3.5", "layer expects an integer"),
    ("04_geometry.use_umap=1", "use_umap expects true or false"),
    ("nosuchthing=1", "no such parameter"),
])
def test_4_overrides_are_checked_before_any_stage_runs(tmp_path, override, message):
    with pytest.raises(PipelineError, match=message):
        run_pipeline("smoke", run=tmp_path / "run", sets=[override], report=False)
    assert not (tmp_path / "run" / "stages").exists()


def test_4_papermill_can_parse_every_parameters_cell():
    import papermill as pm

    from emolib.pipeline import notebook_parameters

    for nb in sorted((REPO / "notebooks").glob("0*.ipynb")):
        assert set(pm.inspect_notebook(str(nb))) == set(notebook_parameters(nb)), nb.name


# ---- 5. empty texts and damaged files --------------------------------------------------------------
def test_5_empty_texts_are_reported_short_never_a_crash(tiny):
    model, tok = tiny
    all_empty = pooled_means(model, tok, ["", ""], start=0, batch_size=2, ids=["a", "b"])
    assert all_empty.short_ids == ["a", "b"] and torch.isnan(all_empty.means).all()
    mixed = pooled_means(model, tok, ["", "A full sentence of text here.", ""], start=1, batch_size=3)
    assert mixed.short_ids == [0, 2] and not torch.isnan(mixed.means[1]).any()
    with pytest.raises(ValueError, match="empty text"):
        token_activations(model, tok, "")


def test_5_a_truncated_gguf_is_a_clear_error(tmp_path):
    p = tmp_path / "cut.gguf"
    p.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x05" * 64)
    with pytest.raises(ModelLoadError, match="damaged or incomplete GGUF"):
        load_model(str(p))
    q = tmp_path / "not.gguf"
    q.write_bytes(b"PK\x03\x04 a zip")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_model(str(q))


# ---- 6. NaN never passes silently -------------------------------------------------------------------
def _vectors(width=64, norms=None):
    return EmotionVectors(vectors=torch.randn(2, 3, width), emotions=["calm", "sad", "happy"], layers=[1, 2],
                          norms=torch.tensor([2.0, 3.0]) if norms is None else norms, default_layer=2,
                          center=torch.zeros(2, width))


@pytest.mark.parametrize("strength", [float("nan"), float("inf")])
def test_6_a_non_finite_strength_is_refused(tiny, strength):
    model, _ = tiny
    with pytest.raises(ValueError, match="strength must be a finite number"):
        with steer(model, torch.randn(64), layers=[1], strength=strength):
            pass


@pytest.mark.parametrize("norms", [torch.tensor([float("nan"), 1.0]), torch.tensor([0.0, 1.0]),
                                   torch.tensor([1.0, float("inf")])])
def test_6_vectors_refuse_nan_or_zero_norms(norms):
    with pytest.raises(ValueError, match="finite and positive"):
        _vectors(norms=norms)
    bad = torch.randn(2, 3, 8)
    bad[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or infinite values at \(layer, emotion\) \(2, 'happy'\)"):
        EmotionVectors(vectors=bad, emotions=["calm", "sad", "happy"], layers=[1, 2], norms=torch.ones(2))


# ---- 7. raw errors become messages -------------------------------------------------------------
def test_7_monitor_with_vectors_of_another_width(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="width 32 but the model's residual stream has width 64"):
        Monitor(_vectors(width=32)).score(model, tok, [{"role": "user", "content": "Hello there."}])


def test_7_norms_without_the_layer_and_empty_layers(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match=r"norms has no entry for layer 2 \(it has layers \[1\]\)"):
        with steer(model, torch.randn(64), layers=[2], strength=0.1, norms={1: 3.0}):
            pass
    with pytest.raises(ValueError, match="layers is empty"):
        pooled_means(model, tiny[1], ["some text here"], layers=[])


def test_7_a_message_without_content(tiny):
    _, tok = tiny
    with pytest.raises(ValueError, match="Message 1 has no 'content'"):
        encode_chat(tok, [{"role": "user", "content": "hi"}, {"role": "assistant"}])


def test_7_an_unwritable_run_folder_fails_before_work_starts(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(PipelineError, match="Cannot write in"):
        run_pipeline("smoke", run=blocker / "run", report=False)
    if os.geteuid() != 0:  # root ignores permission bits (CI runs as root)
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            with pytest.raises(PipelineError, match="Cannot write in"):
                run_pipeline("smoke", run=ro / "run", report=False)
        finally:
            ro.chmod(0o755)


# ---- 8. truncation is announced; multi-byte tokens show once -------------------------------------------
def test_8_long_texts_are_cut_with_a_warning(tiny):
    model, tok = tiny
    with pytest.warns(UserWarning, match=r"1 of 2 text\(s\) are longer than max_length=16 tokens"):
        pooled_means(model, tok, ["short text", "word " * 40], start=0, max_length=16)
    model.config.max_position_embeddings, old = 32, model.config.max_position_embeddings
    try:
        with pytest.warns(UserWarning, match="the model has 32 positions; only the first 32 are read"):
            acts, ids = token_activations(model, tok, "word " * 60, layers=[1])
        assert acts.shape[0] == 32
    finally:
        model.config.max_position_embeddings = old


def test_8_multibyte_characters_are_displayed_once(tiny):
    from emolib.monitor.heatmap import display_tokens

    _, tok = tiny
    chat = encode_chat(tok, [{"role": "user", "content": "我很生气"}], add_generation_prompt=False)
    assert "".join(chat.tokens).count("我") == 1 and "".join(chat.tokens).count("气") == 1
    ids = tok("我很生气")["input_ids"]
    assert "".join(display_tokens(tok, ids)) == "我很生气"


# ---- 9. one corrupt submission does not stop a class's grading --------------------------------
def test_9_grading_goes_on_past_a_corrupt_submission(tmp_path, monkeypatch):
    import nbformat

    from emolib.teaching import course

    subs = tmp_path / "subs"
    subs.mkdir()
    nbformat.write(nbformat.v4.new_notebook(), str(subs / "alice.ipynb"))
    (subs / "bob.ipynb").write_text('{"cells": [ this is not json')
    (subs / "carol.ipynb").write_bytes(b"\x00\x01binary")
    calls = []

    def fake_grade(path, out, timeout=600):
        calls.append(Path(path).stem)
        return [{"grade_id": "ex1-test", "exercise": "ex1", "score": 10.0, "max_score": 10.0, "error": ""}], True

    monkeypatch.setattr(course, "grade_notebook", fake_grade)
    table = course.grade(tmp_path / "classroom", subs, engine="builtin").set_index("student")
    assert calls == ["alice"]
    assert table.loc["alice", "status"] == "graded" and table.loc["alice", "total"] == 10.0
    for s in ("bob", "carol"):
        assert table.loc[s, "total"] == 0 and table.loc[s, "status"].startswith("not a readable notebook")
    failures = json.loads((tmp_path / "classroom" / "failures.json").read_text())
    assert "not a readable notebook" in failures["bob"][0]["error"]


def test_9_docs_say_how_to_grade_in_a_sandbox():
    text = (REPO / "docs" / "teaching.md").read_text()
    assert "sandbox" in text.lower() and "rights" in text.lower()


# ---- 10. shards hold no clock: the same work gives the same bytes ---------------------------------
def test_10_shards_are_byte_deterministic(tiny, tmp_path):
    model, tok = tiny
    a = pool_corpus(model, tok, RECORDS, tmp_path / "a", model_id="tiny", start=4, shard_size=2)
    b = pool_corpus(model, tok, RECORDS, tmp_path / "b", model_id="tiny", start=4, shard_size=2)
    names = sorted(p.name for p in (tmp_path / "a").glob("shard-*"))
    assert names and names == sorted(p.name for p in (tmp_path / "b").glob("shard-*"))
    for n in names:
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes()
    assert a.meta["seconds"] > 0 and b.meta["total_tokens"] == a.meta["total_tokens"]
