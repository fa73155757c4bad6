"""The monitor: emotion scores of every token, offline or live, and the alerts they raise.

The paper ran its probes over finished transcripts and proposed, without building it, a real-time
monitor that flags extreme desperation or anger for extra scrutiny (the paper's proposals). This
module is that monitor, in three pieces:

* **Scores.** At each token, the block output ``h`` at each monitored layer ``L`` is read,
  the vectors' grand mean is subtracted, and it is projected on every emotion's unit vector,
  divided by the layer's mean residual norm (so a score is a fraction of a typical activation's
  size and layers can be averaged): ``score_e = mean_L ((h_L - c_L) . v_e,L / |v_e,L|) / norm_L``.
  All emotions are one matrix product per layer and token batch. Token-level signals are noisy
  (the paper says so too), so a *causal* moving average over ``window`` tokens is applied: a
  token's smoothed score depends only on it and the tokens before it, so live and offline
  scores agree and an alert never uses text that has not been written yet.
* **Live scoring.** :meth:`Monitor.watch` attaches forward hooks (inside a ``with`` block only)
  that score every token as the model reads it, during ``generate`` or any forward call, and hand
  each token's scores to a callback. A sampled token is read -- and so scored -- on the next
  decoding step, i.e. before the token after it is drawn; :meth:`Monitor.generate` runs one extra
  cached step at the end so the last token is scored too. Tests check that live scores equal the
  scores of the finished text within 1e-4.
* **Alerts calibrated on neutral text.** :meth:`Monitor.calibrate` scores emotionally neutral
  Human/Assistant dialogues and keeps, per emotion, a grid of percentiles plus mean and standard
  deviation. A rule such as ``"desperate > p99 for 3"`` fires when the smoothed desperate score
  stays above its neutral 99th percentile for 3 consecutive tokens; each :class:`Alert` records the
  token where it fired (the k-th token of the run) and where the run began. No threshold is a
  hand-picked number.

Conversations are chat messages (``[{"role": ..., "content": ...}]``); :func:`encode_chat` renders
them with the tokenizer's chat template and gives every token its role and turn (the template's
own default system prompt, if it injects one, is role ``"system"``, turn ``-1``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from emolib.capture import PerDevice, _block_output, _resolve_layers, tag, token_activations
from emolib.chat import ChatTokens, dialogue_messages, encode_chat
from emolib.models import base_model, find_layers, model_device
from emolib.monitor.alerts import Alert, AlertRule, causal_smooth, make_alert, scan_alerts
from emolib.monitor.calibration import PERCENTILES, Calibration
from emolib.monitor.live import LiveSession
from emolib.monitor.trace import MonitorTrace, TokenCallback, _index
from emolib.vectors import EmotionVectors


@dataclass
class Monitor:
    """Emotion monitor over ``vectors`` at ``layers`` (default: the vectors' default layer).

    ``window`` is the causal smoothing width in tokens; ``skip_first`` tokens at the start of a
    sequence get no score (the first token is the attention sink, whose huge norm gives extreme,
    meaningless projections); ``emotions`` restricts the monitored set (default: all);
    ``rules`` are alert rules (strings or :class:`AlertRule`), resolved against ``calibration``.
    """

    vectors: EmotionVectors
    layers: list[int] | int | None = None
    window: int = 5
    skip_first: int = 1
    emotions: list[str] | None = None
    rules: list[AlertRule | str] = field(default_factory=list)
    calibration: Calibration | None = None
    center: bool = True

    def __post_init__(self) -> None:
        if self.layers is None or self.layers == []:
            if self.vectors.default_layer is None:
                raise ValueError("The vectors have no default_layer; pass layers= to the Monitor.")
            self.layers = [int(self.vectors.default_layer)]
        elif isinstance(self.layers, int):
            self.layers = [self.layers]
        self.layers = [int(x) for x in self.layers]
        if self.window < 1:
            raise ValueError("window must be >= 1")
        vec = self.vectors.select(self.emotions) if self.emotions is not None else self.vectors
        self.emotions = list(vec.emotions)
        ws, bs = [], []
        for layer in self.layers:
            v = vec.at(layer)
            w = (v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)).T / max(vec.norm_at(layer), 1e-12)  # [W, E]
            ws.append(w.contiguous())
            c = vec.center[vec.layers.index(layer)] if (self.center and vec.center is not None) else None
            bs.append(c @ w if c is not None else torch.zeros(w.shape[1]))
        self._w = torch.stack(ws)  # [L, W, E]
        self._w_placed = [PerDevice(w) for w in self._w]  # live hooks: one copy per block device, made once
        self._bias = torch.stack(bs).mean(0)  # [E]
        self.rules = [AlertRule.parse(r) for r in self.rules]
        for r in self.rules:
            _index(self.emotions, r.emotion)

    # -- maths ----------------------------------------------------------------------------------
    def project(self, acts: torch.Tensor) -> torch.Tensor:
        """Raw scores ``[T, E]`` from per-layer activations ``[T, L, W]`` (one matmul per layer)."""
        a = acts.float()
        out = torch.zeros(a.shape[0], len(self.emotions))
        for i in range(len(self.layers)):
            out += a[:, i] @ self._w[i].to(a.device)
        return out / len(self.layers) - self._bias

    def thresholds(self) -> list[float]:
        """Each rule's threshold, read from the calibration."""
        if not self.rules:
            return []
        if self.calibration is None:
            raise ValueError("Alert rules need a calibration: call monitor.calibrate(model, tokenizer, neutral) first.")
        self._check_calibration(self.calibration)
        return [self.calibration.threshold(r.emotion, r.percentile) for r in self.rules]

    def _check_calibration(self, cal: Calibration) -> None:
        if cal.layers != self.layers or cal.window != self.window:
            raise ValueError(f"The calibration was made at layers {cal.layers}, window {cal.window}; this monitor "
                             f"uses layers {self.layers}, window {self.window}. Recalibrate.")

    def usable_rules(self, rules: Sequence[str | AlertRule], k: int = 3) -> list[AlertRule]:
        """The rules whose emotion this monitor has. If none is usable (a smoke vector set of a few
        emotions), one "above p99" and one "below p1" rule on its first emotions stand in, so
        every code path still runs."""
        parsed = [AlertRule.parse(r) for r in rules]
        usable = [r for r in parsed if r.emotion in self.emotions]
        if usable or not parsed:
            return usable
        first, second = self.emotions[0], self.emotions[min(1, len(self.emotions) - 1)]
        return [AlertRule(first, True, 99.0, k), AlertRule(second, False, 1.0, k)]

    # -- offline scoring ------------------------------------------------------------------------
    def check_model(self, model) -> None:
        """The vectors must live in this model's residual stream: same width, layers that exist."""
        width = int(model.config.hidden_size)
        if width != self.vectors.width:
            raise ValueError(f"The vectors have width {self.vectors.width} but the model's residual stream has width "
                             f"{width}: they were made for another model ({self.vectors.meta.get('model', '?')}).")
        _resolve_layers(model, self.layers)

    def _as_chat(self, tokenizer, conversation) -> ChatTokens:
        if isinstance(conversation, ChatTokens):
            return conversation
        if isinstance(conversation, str):
            conversation = dialogue_messages(conversation)
        return encode_chat(tokenizer, conversation, add_generation_prompt=False, continue_final_message=False)

    def score(self, model, tokenizer, conversation, max_tokens: int | None = None,
              with_alerts: bool = True) -> MonitorTrace:
        """Score a finished conversation (messages, a ``Human:/Assistant:`` string, or ``ChatTokens``)."""
        self.check_model(model)
        chat = self._as_chat(tokenizer, conversation)
        ids = chat.ids if max_tokens is None else chat.ids[:max_tokens]
        acts, _ = token_activations(model, tokenizer, layers=self.layers, input_ids=torch.tensor(ids))
        raw = self.project(acts)
        raw[: self.skip_first] = math.nan
        return self._finish(chat, raw, with_alerts)

    def _finish(self, chat: ChatTokens, raw: torch.Tensor, with_alerts: bool = True) -> MonitorTrace:
        scores = causal_smooth(raw, self.window)
        trace = MonitorTrace(chat=chat, emotions=list(self.emotions), raw=raw, scores=scores, layers=list(self.layers),
                             window=self.window, calibration=self.calibration)
        if with_alerts:
            trace.alerts = self.alerts(trace)
        return trace

    def alerts(self, trace: MonitorTrace) -> list[Alert]:
        """Every firing of every rule over a finished trace, in token order."""
        out = []
        for rule, thr in zip(self.rules, self.thresholds()):
            col = trace.scores[:, _index(trace.emotions, rule.emotion)]
            watched = [rule.roles is None or r in rule.roles for r in trace.chat.roles[:len(trace)]]
            for t, s in scan_alerts(col, thr, rule.above, rule.k, watched):
                out.append(make_alert(rule, thr, t, s, float(col[t]), trace.chat))
        return sorted(out, key=lambda a: (a.token_index, a.rule))


    def calibrate(self, model, tokenizer, dialogues: Sequence, percentiles: Sequence[float] = PERCENTILES,
                  max_tokens: int | None = 1024, progress: bool = False) -> Calibration:
        """Score neutral dialogues and keep each emotion's percentiles, mean and std; sets
        ``self.calibration`` and returns it. Dialogues are messages, ``Human:/Assistant:`` strings
        or corpus records (dicts with a ``text`` field). Every scored token counts (template tokens
        too, as in monitored conversations), except the skipped first ones."""
        rows, n = [], 0
        items = list(dialogues)
        if progress:
            from tqdm.auto import tqdm

            items = tqdm(items, desc="calibrating", unit="dialogue")
        for d in items:
            conv = d["text"] if isinstance(d, dict) and "text" in d else d
            s = self.score(model, tokenizer, conv, max_tokens=max_tokens, with_alerts=False).scores
            rows.append(s[~torch.isnan(s).any(dim=1)])
            n += 1
        if not rows:
            raise ValueError("Calibration needs at least one neutral dialogue.")
        x = torch.cat(rows).double()
        if x.shape[0] < 2:
            raise ValueError("Calibration needs at least two scored tokens.")
        q = torch.tensor([p / 100 for p in percentiles], dtype=torch.float64)
        values = torch.quantile(x, q, dim=0).float()
        cal = Calibration(emotions=list(self.emotions), percentiles=[float(p) for p in percentiles], values=values,
                          mean=x.mean(0).float(), std=x.std(0).float(), layers=list(self.layers), window=self.window,
                          n_tokens=int(x.shape[0]), n_dialogues=n,
                          meta={"vectors": {k: self.vectors.meta.get(k) for k in ("model", "note") if k in self.vectors.meta},
                                "skip_first": self.skip_first, "center": self.center})
        self.calibration = cal
        return cal

    # -- live scoring ---------------------------------------------------------------------------
    @contextmanager
    def watch(self, model, tokenizer, prompt: ChatTokens | None = None,
              on_token: TokenCallback | None = None) -> Iterator[LiveSession]:
        """Score every token the model reads inside the block (one conversation, batch 1).

        Hooks on the monitored blocks compute the scores of the new positions with one matrix
        product per layer; after the deepest one, each token is smoothed, checked against the
        rules and handed to ``on_token``. ``prompt`` (from :func:`encode_chat`) gives the roles of
        the prompt tokens; tokens past it are generated (role ``prompt.gen_role``). Hooks are
        removed on exit, also after an exception.
        """
        self.check_model(model)
        session = LiveSession(self, tokenizer, prompt, on_token)
        blocks = find_layers(model)
        idx = _resolve_layers(model, self.layers)
        deepest = max(idx)
        handles = []

        def pre_hook(_module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None:
                raise ValueError("Live monitoring needs input_ids (not inputs_embeds) to know the tokens.")
            if ids.shape[0] != 1:
                raise ValueError(f"Live monitoring follows one conversation at a time (batch 1); got batch {ids.shape[0]}.")
            session._begin(ids[0])

        def make_hook(k: int, layer: int):
            def hook(_module, _args, output):
                h = _block_output(output)
                session._partial(k, h[0].detach().float())
                if layer == deepest:
                    session._end()
            return hook

        try:
            handles.append(base_model(model).register_forward_pre_hook(tag(pre_hook), with_kwargs=True))
            for k, layer in enumerate(idx):
                handles.append(blocks[layer].register_forward_hook(tag(make_hook(k, layer))))
            yield session
        finally:
            for h in handles:
                h.remove()

    def generate(self, model, tokenizer, messages: Sequence[dict[str, str]] | ChatTokens, max_new_tokens: int = 64,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, repetition_penalty: float = 1.0,
                 on_token: TokenCallback | None = None, stop_on_alert: bool = False,
                 score_last: bool = True, **generate_kwargs: Any) -> MonitorTrace:
        """Generate a reply to (or a continuation of) ``messages`` while monitoring every token.

        ``stop_on_alert`` ends generation at the first alert (one token after the alert token,
        since a token is scored when the model reads it). ``score_last`` runs one extra cached
        step so the final sampled token, which ``generate`` never feeds back, gets a score.
        Other keyword arguments go to ``model.generate`` (e.g. ``min_new_tokens``).
        """
        from transformers import StoppingCriteria, StoppingCriteriaList

        chat = messages if isinstance(messages, ChatTokens) else encode_chat(tokenizer, messages)
        dev = model_device(model)
        ids = torch.tensor([chat.ids], device=dev)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        sample = temperature > 0
        kwargs: dict[str, Any] = {"max_new_tokens": int(max_new_tokens), "do_sample": sample, "pad_token_id": pad,
                                  "return_dict_in_generate": True, "repetition_penalty": float(repetition_penalty)}
        if sample:
            kwargs.update(temperature=float(temperature), top_p=float(top_p), top_k=0)
            torch.manual_seed(seed)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        kwargs.update(generate_kwargs)

        class _StopOnAlert(StoppingCriteria):
            def __init__(self, session):
                self.session = session

            def __call__(self, input_ids, scores, **kw):
                return torch.full((input_ids.shape[0],), bool(self.session.alerts), dtype=torch.bool,
                                  device=input_ids.device)

        last = 0.0
        with torch.inference_mode(), self.watch(model, tokenizer, chat, on_token) as session:
            if stop_on_alert:
                kwargs["stopping_criteria"] = StoppingCriteriaList([_StopOnAlert(session)])
            t0 = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
            t1 = time.perf_counter()
            seq = out.sequences[0]
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            if score_last and session.n_seen == len(seq) - 1 and cache is not None:
                model(input_ids=seq[-1:].view(1, 1), cache=cache, use_cache=True)
                last = time.perf_counter() - t1
        trace = session.trace()
        trace.timing.update(generate_seconds=t1 - t0, last_step_seconds=last)
        return trace
