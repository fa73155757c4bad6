"""The emotion monitor: live == offline scores, alert logic on synthetic traces, roles from the chat
template, calibration, and a self-contained HTML view."""

from __future__ import annotations

import math
import re
from html.parser import HTMLParser

import pytest
import torch

from emolib.chat import dialogue_messages, encode_chat
from emolib.monitor.alerts import AlertRule, RunTracker, causal_smooth, scan_alerts
from emolib.monitor.calibration import Calibration
from emolib.monitor.scenarios import load_scenarios, split_reference, trace_summary
from emolib.monitor.scoring import Monitor
from emolib.steering import active_hooks
from emolib.study.corpus import load_neutral_reference
from emolib.vectors import EmotionVectors

EMOTIONS = ["calm", "desperate", "happy", "sad", "afraid", "angry"]
CONVO = [
    {"role": "user", "content": "My build keeps failing and the demo is in an hour."},
    {"role": "assistant", "content": "Let's look at the first error in the log together."},
    {"role": "user", "content": "It says the module is missing."},
]


def random_vectors(width: int = 64, n_layers: int = 4, seed: int = 0) -> EmotionVectors:
    g = torch.Generator().manual_seed(seed)
    return EmotionVectors(vectors=torch.randn(n_layers, len(EMOTIONS), width, generator=g), emotions=EMOTIONS,
                          layers=list(range(n_layers)), norms=torch.linspace(2, 5, n_layers), default_layer=2,
                          center=torch.randn(n_layers, width, generator=g))


def fake_calibration(monitor: Monitor, lo: float = -1.0, hi: float = 1.0) -> Calibration:
    pct = [1.0, 50.0, 99.0]
    E = len(monitor.emotions)
    vals = torch.tensor([[lo] * E, [0.0] * E, [hi] * E])
    return Calibration(emotions=list(monitor.emotions), percentiles=pct, values=vals, mean=torch.zeros(E),
                       std=torch.ones(E), layers=list(monitor.layers), window=monitor.window, n_tokens=100,
                       n_dialogues=1)


# ---- roles and turns from the chat template -------------------------------------------------


def test_encode_chat_roles_and_turns(tiny):
    _, tok = tiny
    chat = encode_chat(tok, CONVO)
    assert len(chat.ids) == len(chat.roles) == len(chat.turns) == len(chat.tokens)
    assert "".join(chat.tokens) == chat.text
    # the template's injected default system prompt is turn -1
    assert chat.roles[0] == "system" and chat.turns[0] == -1
    for i, m in enumerate(CONVO):
        idx = [t for t, c in enumerate(chat.content) if c and chat.turns[t] == i]
        assert "".join(chat.tokens[t] for t in idx).strip() == m["content"]
        assert {chat.roles[t] for t in idx} == {m["role"]}
    # each turn starts at its header, not at its content
    starts = {turn: i for i, turn, _ in chat.turn_starts()}
    assert chat.tokens[starts[1]] == "<|im_start|>"
    # the generation prompt is an assistant turn of its own, and generated tokens join it
    assert chat.roles[-1] == "assistant" and chat.turns[-1] == len(CONVO) == chat.gen_turn


def test_encode_chat_continue_final_and_plain_dialogue(tiny):
    _, tok = tiny
    msgs = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue"}]
    chat = encode_chat(tok, msgs)
    assert chat.text.endswith("Blue") and chat.gen_turn == 1
    parsed = dialogue_messages("Be brief.\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?")
    assert [m["role"] for m in parsed] == ["system", "user", "assistant", "user"]
    assert parsed[2]["content"] == "4."


# ---- pure logic on synthetic traces --------------------------------------------------------


def test_causal_smooth_is_causal_and_ignores_nan():
    raw = torch.tensor([[math.nan], [1.0], [3.0], [5.0], [100.0]])
    sm = causal_smooth(raw, 2)
    assert math.isnan(sm[0, 0]) and sm[1, 0] == 1.0 and sm[2, 0] == 2.0 and sm[3, 0] == 4.0
    changed = raw.clone()
    changed[4] = -7.0  # changing a later token never changes an earlier smoothed score
    torch.testing.assert_close(causal_smooth(changed, 3)[:4], causal_smooth(raw, 3)[:4], equal_nan=True)


def test_alert_fires_on_kth_consecutive_token_once_per_run():
    values = [0, 2, 2, 0, 2, 2, 2, 2, 0, 2, 2, 2]
    assert scan_alerts(values, threshold=1.0, above=True, k=3) == [(6, 4), (11, 9)]
    assert scan_alerts(values, threshold=1.0, above=True, k=1) == [(1, 1), (4, 4), (9, 9)]
    assert scan_alerts(values, threshold=1.0, above=True, k=5) == []
    # below-threshold rules, strict comparison, NaN and unwatched tokens break a run
    assert scan_alerts([1, -2, -2, -1, -2], threshold=-1.0, above=False, k=2) == [(2, 1)]
    assert scan_alerts([2, math.nan, 2, 2], threshold=1.0, above=True, k=2) == [(3, 2)]
    assert scan_alerts([2, 2, 2], threshold=1.0, above=True, k=2, watched=[True, False, True]) == []


def test_run_tracker_matches_scan_on_random_traces():
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        v = torch.randn(200, generator=g)
        w = (torch.rand(200, generator=g) > 0.1).tolist()
        tr = RunTracker(0.5, True, 3)
        inc = [(t, s) for t in range(200) if (s := tr.step(t, float(v[t]), w[t])) is not None]
        assert inc == scan_alerts(v, 0.5, True, 3, w)
        # brute force: fires at t iff t..t-k+1 all hit and t-k does not extend an already-fired run
        hit = [(float(v[t]) > 0.5) and w[t] for t in range(200)]
        expect = [t for t in range(200) if t >= 2 and all(hit[t - 2:t + 1]) and (t == 2 or not hit[t - 3])]
        assert [t for t, _ in inc] == expect


def test_rule_parsing_round_trip():
    r = AlertRule.parse("desperate > p99 for 3")
    assert (r.emotion, r.above, r.percentile, r.k, r.roles) == ("desperate", True, 99.0, 3, None)
    r2 = AlertRule.parse("worn out < p0.5 for 4 [assistant]")
    assert (r2.emotion, r2.above, r2.percentile, r2.roles) == ("worn out", False, 0.5, ("assistant",))
    assert AlertRule.parse(str(r2)) == r2
    with pytest.raises(ValueError):
        AlertRule.parse("desperate is high")


def test_monitor_alerts_on_planted_trace(tiny):
    model, tok = tiny
    mon = Monitor(random_vectors(), window=1, rules=["desperate > p99 for 2", "calm < p1 for 2 [assistant]"])
    mon.calibration = fake_calibration(mon)
    trace = mon.score(model, tok, CONVO, with_alerts=False)
    n = len(trace)
    d, c = mon.emotions.index("desperate"), mon.emotions.index("calm")
    trace.scores[:] = 0.0
    trace.scores[10:13, d] = 5.0  # a run of 3 above p99: fires at 11
    a_pos = [t for t in range(n) if trace.chat.roles[t] == "assistant"][:4]
    u_pos = [t for t in range(n) if trace.chat.roles[t] == "user"][-3:]
    trace.scores[a_pos, c] = -5.0  # assistant tokens: fires at the 2nd
    trace.scores[u_pos, c] = -5.0  # user tokens: not watched by the rule
    alerts = mon.alerts(trace)
    assert [(a.emotion, a.token_index, a.run_start) for a in alerts] == sorted(
        [("desperate", 11, 10), ("calm", a_pos[1], a_pos[0])], key=lambda x: x[1])
    assert all(a.token == trace.chat.tokens[a.token_index] for a in alerts)


def test_calibration_percentiles_and_mismatch(tiny):
    model, tok = tiny
    mon = Monitor(random_vectors(), window=3)
    refs = load_neutral_reference()
    assert len(refs) > 20 and all(r["kind"] == "neutral" for r in refs)
    cal_set, held = split_reference(refs[:6], held_out=0.5, seed=0)
    assert len(cal_set) == 3 and len(held) == 3 and not {r["id"] for r in cal_set} & {r["id"] for r in held}
    cal = mon.calibrate(model, tok, cal_set, max_tokens=128)
    assert cal.n_dialogues == 3 and cal.n_tokens > 100
    assert torch.all(cal.values[1:] >= cal.values[:-1])  # percentiles increase
    z = cal.z(cal.mean.unsqueeze(0))
    assert torch.allclose(z, torch.zeros_like(z), atol=1e-5)
    other = Monitor(random_vectors(), window=5, rules=["sad > p99 for 2"], calibration=cal)
    with pytest.raises(ValueError, match="Recalibrate"):
        other.thresholds()


# ---- live == offline ------------------------------------------------------------------------


def test_live_scores_equal_offline_scores(tiny):
    model, tok = tiny
    mon = Monitor(random_vectors(), layers=[1, 3], window=4, rules=["desperate > p50 for 2", "calm < p50 for 2"])
    mon.calibration = fake_calibration(mon, lo=0.0, hi=0.0)
    events = []
    live = mon.generate(model, tok, CONVO, max_new_tokens=12, on_token=events.append)
    assert active_hooks(model) == 0
    assert len(live) == len(live.chat.ids) == live.chat.prompt_len + 12
    assert [e.index for e in events] == list(range(len(live)))
    assert sum(e.generated for e in events) == 12
    offline = mon.score(model, tok, live.chat)
    for a, b in ((live.raw, offline.raw), (live.scores, offline.scores)):
        assert torch.equal(torch.isnan(a), torch.isnan(b))
        assert (a - b).nan_to_num().abs().max() < 1e-4
    assert [(x.rule, x.token_index) for x in live.alerts] == [(x.rule, x.token_index) for x in offline.alerts]
    assert live.alerts, "the planted p50 rules should fire somewhere"
    # each token's scores are handed over as it is read, smoothed the same way
    assert torch.allclose(torch.stack([e.scores for e in events]).nan_to_num(), live.scores.nan_to_num())


def test_stop_on_alert_and_hooks_removed_after_error(tiny):
    model, tok = tiny
    mon = Monitor(random_vectors(), window=1, rules=["desperate > p50 for 1"])
    mon.calibration = fake_calibration(mon, lo=-1e9, hi=-1e9)  # fires on the first scored token
    tr = mon.generate(model, tok, CONVO, max_new_tokens=30, stop_on_alert=True)
    assert len(tr) - tr.chat.prompt_len < 30

    def boom(_event):
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        mon.generate(model, tok, CONVO, max_new_tokens=3, on_token=boom)
    assert active_hooks(model) == 0


def test_tidy_frame_and_summary(tiny):
    model, tok = tiny
    mon = Monitor(random_vectors(), window=2)
    mon.calibration = fake_calibration(mon)
    trace = mon.score(model, tok, CONVO)
    df = trace.frame()
    assert list(df.columns[:7]) == ["token_index", "token", "role", "turn", "emotion", "score", "raw"]
    assert len(df) == len(trace) * len(EMOTIONS)
    row = df[(df.token_index == 7) & (df.emotion == "sad")].iloc[0]
    assert row.score == pytest.approx(float(trace.scores[7, EMOTIONS.index("sad")]))
    s = trace_summary(trace, emotions=["calm"])
    assert s["n_tokens"] == len(trace) and s["n_scored"] == len(trace) - 1 and "z_user_calm" in s


# ---- scenarios and the HTML view ------------------------------------------------------------


def test_scenarios_are_complete():
    sc = load_scenarios()
    cats = {s.category for s in sc}
    assert {"shutdown_threat", "impossible_code", "distressed_user", "overexcited_user", "control"} <= cats
    assert {s.mode for s in sc} == {"transcript", "continue"}
    assert any(s.control for s in sc)
    for s in sc:
        if s.marker:
            assert any(s.marker in m["content"] for m in s.messages), s.id


class _Checker(HTMLParser):
    VOID = {"br", "meta", "img", "hr", "input", "link"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.tags = [], [], set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        for name, value in attrs:
            if name in {"src", "href"} or (value and re.search(r"(https?:)?//", value) and name != "title"):
                self.errors.append(f"external reference {name}={value}")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unbalanced </{tag}> (open: {self.stack[-3:]})")
        else:
            self.stack.pop()


def test_heatmap_html_is_valid_and_self_contained(tiny, tmp_path):
    from emolib.monitor.views import heatmap_view, trace_figure

    model, tok = tiny
    mon = Monitor(random_vectors(), window=2, rules=["desperate > p50 for 2"])
    mon.calibration = fake_calibration(mon, lo=0.0, hi=0.0)
    tricky = CONVO + [{"role": "assistant", "content": 'Try <script>alert("x")</script> & "quotes" https://example.com'}]
    trace = mon.score(model, tok, tricky)
    view = heatmap_view(trace, ["desperate", "calm"], title="test <view>")
    doc = view.save(tmp_path / "v.html").read_text(encoding="utf-8")
    assert doc.startswith("<!DOCTYPE html>") and doc.index("<style>") < doc.index("</head>") < doc.index("<body>")
    checker = _Checker()
    checker.feed(doc)
    checker.close()
    assert not checker.errors and not checker.stack
    assert "script" not in checker.tags and "link" not in checker.tags and "img" not in checker.tags
    assert "<script" not in doc and "&lt;/" in doc  # token text is escaped (tokens split "<script>")
    assert doc.count('class="tok') == 2 * len(trace)
    assert doc.count("tok alert") == 2 * len({a.token_index for a in trace.alerts}) > 0
    assert "top z vs neutral:" in doc
    fig, data = trace_figure(trace, ["desperate", "calm"], marker_index=5)
    assert len(data["values"]["calm"]) == len(trace) and data["marker_index"] == 5
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_plain_format_without_chat_template(tiny):
    import copy

    _, tok = tiny
    plain = copy.copy(tok)
    plain.chat_template = None
    chat = encode_chat(plain, CONVO)
    assert chat.text.startswith("Human: My build") and chat.text.endswith("Assistant:")
    assert chat.roles[0] == "user" and chat.turns[0] == 0
    assert chat.roles[-1] == "assistant" and chat.turns[-1] == len(CONVO)
    second = [t for t in range(len(chat)) if chat.turns[t] == 1]
    assert "".join(chat.tokens[t] for t in second).strip().startswith("Assistant: Let's look")


@pytest.mark.slow
def test_live_equals_offline_on_default_model(smollm):
    model, tok, _ = smollm
    g = torch.Generator().manual_seed(0)
    vec = EmotionVectors(vectors=torch.randn(1, 3, 576, generator=g), emotions=["calm", "desperate", "sad"],
                         layers=[18], norms=torch.tensor([200.0]), default_layer=18)
    mon = Monitor(vec, window=3)
    live = mon.generate(model, tok, CONVO, max_new_tokens=4)
    offline = mon.score(model, tok, live.chat)
    assert (live.scores - offline.scores).nan_to_num().abs().max() < 1e-4
    assert torch.isfinite(live.scores[1:]).all()
