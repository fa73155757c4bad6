"""Chat formatting: the one way emolib renders a conversation for a model and finds its parts.

Every stage that talks to the model goes through this module: 01 (the prompt a writer answers),
03 (the probes read at the assistant header), 05 (every token's role and turn) and 06 (the user,
header and prefill spans that steering is confined to, and the option read-outs). One renderer
and one span rule, so two stages can never disagree about which token is "the assistant colon".

* **Rendering** (:func:`render`): the tokenizer's chat template when it has one; otherwise the
  paper's plain format, ``Human: ...`` / ``Assistant: ...`` turns separated by blank lines, with an
  untagged system text first. The chosen format is the prompt's ``style`` (``"chat"``/``"plain"``).
  A rendered template already holds its special tokens, so it is tokenized without adding more; the
  plain format gets the tokenizer's usual ones (a BOS for models that use one).
* **Spans** are found from the character offsets of the rendered text, never by re-tokenizing a
  substring (BPE merges at the edges would shift them). The rule (:func:`token_span`): a token
  belongs to a character range when its characters overlap the range; a token with no characters
  (a special token some tokenizers report with an empty offset) belongs to the range it sits in.
* **The assistant header** is what the template's generation prompt adds (ChatML
  ``<|im_start|>assistant\\n``, Llama 3 ``<|start_header_id|>assistant<|end_header_id|>\\n\\n``, Gemma
  ``<start_of_turn>model\\n``, plain ``Assistant:``); its last token is where the paper reads the
  probes before the reply (the "Assistant colon").

:func:`build_prompt` gives a single user turn (plus an optional assistant prefill) with its spans;
:func:`format_user_turn` is the same without a prefill; :func:`encode_chat` labels every token of
a whole conversation with its role and turn; :func:`prompt_text` is the text a writer model answers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

PLAIN_USER = "Human: "
PLAIN_ASSISTANT = "Assistant:"
_PLAIN_TAGS = {"user": "Human", "assistant": "Assistant"}


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def use_chat(tokenizer, style: str = "auto") -> bool:
    """Whether ``style`` (``"auto"``, ``"chat"`` or ``"plain"``) renders with the chat template."""
    if style not in {"auto", "chat", "plain"}:
        raise ValueError(f"style must be 'auto', 'chat' or 'plain', got {style!r}")
    if style == "chat" and not has_chat_template(tokenizer):
        raise ValueError("style='chat' but this tokenizer has no chat template; use style='plain'.")
    return has_chat_template(tokenizer) if style == "auto" else style == "chat"


def _message(i: int, m) -> dict[str, str]:
    """One chat message as ``{"role", "content"}``, or a ValueError saying which message is wrong."""
    if not isinstance(m, dict):
        raise ValueError(f"Message {i} is a {type(m).__name__}; a message is a dict with 'role' and 'content'.")
    missing = [k for k in ("role", "content") if k not in m]
    if missing:
        raise ValueError(f"Message {i} has no {' and no '.join(repr(k) for k in missing)}: {str(m)[:80]}")
    return {"role": str(m["role"]), "content": str(m["content"])}


def render(tokenizer, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False,
           continue_final_message: bool = False, style: str = "auto") -> str:
    """``messages`` as the text the model reads (see the module doc for the two formats)."""
    messages = [_message(i, m) for i, m in enumerate(messages)]
    if use_chat(tokenizer, style):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                             continue_final_message=continue_final_message)
    parts = [f"{_PLAIN_TAGS[m['role']]}: {m['content']}" if m["role"] in _PLAIN_TAGS else m["content"]
             for m in messages]
    text = "\n\n".join(parts)
    if add_generation_prompt and not continue_final_message:
        text += "\n\n" + PLAIN_ASSISTANT
    return text


def prompt_text(tokenizer, user: str, style: str = "auto") -> str:
    """One user message followed by the assistant header: what a writer model is asked to continue."""
    return render(tokenizer, [{"role": "user", "content": user}], add_generation_prompt=True, style=style)


def encode(tokenizer, text: str, chat: bool) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of a rendered text (a chat-templated text carries its own
    special tokens; the plain format gets the tokenizer's usual ones)."""
    enc = tokenizer(text, add_special_tokens=not chat, return_offsets_mapping=True)
    if "offset_mapping" not in enc:
        raise ValueError("This tokenizer gives no offset mapping; a fast (Rust) tokenizer is needed to find spans.")
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def token_span(offsets: Sequence[tuple[int, int]], start: int, stop: int) -> tuple[int, int]:
    """The token span ``[a, b)`` of the characters ``[start, stop)`` -- the one rule of this module.

    A token belongs to the range when its characters overlap it; a token with no characters (empty
    offsets) belongs to it when it sits inside it. An empty range gives an empty span placed at
    the first token that starts at or after ``stop``.
    """
    hits = [i for i, (a, b) in enumerate(offsets)
            if (b > a and b > start and a < stop) or (a == b and start <= a < stop)]
    if not hits:
        after = [i for i, (a, b) in enumerate(offsets) if a >= stop and (b > a or a > stop)]
        pos = after[0] if after else len(offsets)
        return pos, pos
    return hits[0], hits[-1] + 1


def offset_pieces(text: str, offsets: Sequence[tuple[int, int]]) -> list[str]:
    """The text piece of each token, every character given to the first token that covers it.

    Byte-level tokenizers split a multi-byte character (我) over several tokens that all report
    the same character span; slicing each span would show the character once per token.
    """
    out, done = [], 0
    for a, b in offsets:
        a = max(a, done)
        out.append(text[a:b] if b > a else "")
        done = max(done, b)
    return out


# ---- one user turn, with spans -------------------------------------------------------------------


@dataclass
class ChatPrompt:
    """A rendered prompt as token ids, with named token spans ``[start, stop)``.

    ``spans`` always holds ``"user"`` (the user's words), ``"header"`` (the tokens the generation
    prompt added: the assistant header), ``"prefill"`` (an assistant prefill; empty when there is
    none) and ``"assistant"`` (header + prefill), plus any marks asked for by name. ``style`` is
    ``"chat"`` or ``"plain"``; ``tokens`` the text piece of each token.
    """

    text: str
    ids: list[int]
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)
    style: str = "chat"
    user: str = ""
    tokens: list[str] = field(default_factory=list)

    @property
    def user_span(self) -> tuple[int, int]:
        return self.spans["user"]

    @property
    def header_span(self) -> tuple[int, int]:
        return self.spans["header"]

    @property
    def header_index(self) -> int:
        """The last token of the assistant header: where the paper reads the probes (the "Assistant colon")."""
        return self.spans["header"][1] - 1

    @property
    def user_last_index(self) -> int:
        """The last token of the user's own words (the paper's final ".")."""
        return self.spans["user"][1] - 1

    def __len__(self) -> int:
        return len(self.ids)


def _user_turn_text(tokenizer, user: str, system: str | None, chat: bool) -> tuple[str, int, int]:
    """Rendered text up to the end of the assistant header, the char start of the user's words,
    and the char start of the header."""
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    style = "chat" if chat else "plain"
    without = render(tokenizer, msgs, add_generation_prompt=False, style=style)
    full = render(tokenizer, msgs, add_generation_prompt=True, style=style)
    if not chat:  # the blank line between turns belongs to neither; the header is "Assistant:"
        header_start = full.rindex(PLAIN_ASSISTANT)
    elif full.startswith(without) and len(full) > len(without):
        header_start = len(without)
    else:
        end_user = full.rfind(user)
        if end_user < 0:
            raise ValueError("The chat template altered the user message; cannot locate it in the prompt.")
        if full == without:
            # No generation prompt (Mistral's [INST] ... [/INST]): the text closing the user turn is
            # the last thing before the reply, and so the header, if it is more than white space.
            header_start = end_user + len(user)
            if not full[header_start:].strip():
                raise ValueError("The chat template's generation prompt adds no assistant header; "
                                 "there is no 'Assistant colon' token to read. Use style='plain'.")
        else:
            # Templates that close the user turn differently with and without a generation prompt:
            # the header starts after the user's words and whatever both renderings share after them.
            common = 0
            for a, b in zip(full, without):
                if a != b:
                    break
                common += 1
            header_start = max(common, end_user + len(user))
            if header_start >= len(full):
                raise ValueError("The chat template's generation prompt adds no assistant header; "
                                 "there is no 'Assistant colon' token to read. Use style='plain'.")
    user_start = full.rfind(user, 0, header_start)
    if user_start < 0:
        raise ValueError("The chat template altered the user message; cannot locate it in the prompt.")
    return full, user_start, header_start


def build_prompt(tokenizer, user: str, prefill: str = "", system: str | None = None,
                 marks: Mapping[str, str] | None = None, mark_spans: Mapping[str, tuple[int, int]] | None = None,
                 style: str = "auto") -> ChatPrompt:
    """Render one user message (+ an assistant ``prefill``) and find its spans.

    ``marks`` maps a name to a substring of the user message (its first occurrence) whose token
    span is wanted, e.g. an activity; ``mark_spans`` maps a name to character offsets ``[start,
    stop)`` inside the user message. Templates that insert a default system prompt (SmolLM2's does)
    keep it: that is what the model saw in training. The plain format writes the prefill after
    ``Assistant:`` and a space.
    """
    if not user or not user.strip():
        raise ValueError("The user message is empty.")
    chat = use_chat(tokenizer, style)
    head, u0, h0 = _user_turn_text(tokenizer, user, system, chat)
    text = head + ((prefill if chat else " " + prefill) if prefill else "")
    ids, offsets = encode(tokenizer, text, chat)
    p0 = len(head) + (0 if chat or not prefill else 1)
    spans = {"user": token_span(offsets, u0, u0 + len(user.rstrip())),
             "header": token_span(offsets, h0, len(head)),
             "prefill": token_span(offsets, p0, len(text)) if prefill else (len(ids), len(ids))}
    if spans["header"][0] < spans["user"][1]:
        # the user's last token and the header's first merged (possible in plain formats): the header
        # starts after the user's last token
        spans["header"] = (spans["user"][1], spans["header"][1])
    if spans["header"][0] >= spans["header"][1]:
        raise ValueError("The prompt has no assistant-header token; the template is unusual.")
    if not prefill and spans["header"][1] != len(ids):
        raise ValueError("The assistant header is not at the end of the prompt; the template is unusual.")
    spans["assistant"] = (spans["header"][0], len(ids))
    for name, sub in (marks or {}).items():
        at = text.find(sub, u0, u0 + len(user))
        if at < 0:
            raise ValueError(f"Mark {name!r}: {sub!r} does not occur in the user message.")
        spans[name] = token_span(offsets, at, at + len(sub))
    for name, (a, b) in (mark_spans or {}).items():
        if not 0 <= a <= b <= len(user):
            raise ValueError(f"Mark {name!r}: characters [{a}, {b}) fall outside the user message.")
        spans[name] = token_span(offsets, u0 + a, u0 + b)
    return ChatPrompt(text=text, ids=ids, spans=spans, style="chat" if chat else "plain", user=user,
                      tokens=offset_pieces(text, offsets))


def format_user_turn(tokenizer, user: str, system: str | None = None, style: str = "auto") -> ChatPrompt:
    """One user message rendered up to and including the assistant header (no prefill)."""
    return build_prompt(tokenizer, user, system=system, style=style)


def format_many(tokenizer, users: Sequence[str], system: str | None = None, style: str = "auto") -> list[ChatPrompt]:
    """:func:`format_user_turn` over a list."""
    return [format_user_turn(tokenizer, u, system=system, style=style) for u in users]


def header_token(tokenizer, style: str = "auto") -> str:
    """The text of the assistant-header read-out token for this tokenizer (e.g. ``"\\n"`` or ``":"``)."""
    fp = format_user_turn(tokenizer, "Hello.", style=style)
    return fp.tokens[fp.header_index]


def continuation_ids(tokenizer, prompt: ChatPrompt, continuation: str) -> list[int]:
    """Token ids of ``continuation`` as they follow ``prompt`` when the two are tokenized together.

    Raises when the prompt's own tokens change (a merge across the boundary), because then the
    continuation's probability cannot be read as a product of next-token probabilities.
    """
    ids, _ = encode(tokenizer, prompt.text + continuation, prompt.style == "chat")
    if ids[: len(prompt.ids)] != prompt.ids:
        raise ValueError(f"Appending {continuation!r} re-tokenizes the end of the prompt; choose a prefill that "
                         "ends at a token boundary (e.g. a word, with the continuation starting with a space).")
    rest = ids[len(prompt.ids):]
    if not rest:
        raise ValueError(f"{continuation!r} adds no tokens.")
    return rest


# ---- whole conversations, token by token ---------------------------------------------------------


@dataclass
class ChatTokens:
    """A conversation as token ids, each token with its text piece, role, turn and content flag.

    ``turn`` is the index of the message a token belongs to (its template header included; the
    template's injected default system prompt is turn ``-1``); ``content`` is True for tokens inside
    a message's own text (False for template tokens such as ``<|im_start|>assistant``).
    Generated tokens are appended with :meth:`append` and belong to ``gen_role`` / ``gen_turn``.
    """

    text: str
    ids: list[int]
    tokens: list[str]
    roles: list[str]
    turns: list[int]
    content: list[bool]
    offsets: list[tuple[int, int]]
    messages: list[dict[str, str]] = field(default_factory=list)
    gen_role: str = "assistant"
    gen_turn: int = 0
    prompt_len: int = 0
    style: str = "chat"
    _gen_ids: list[int] = field(default_factory=list, repr=False)
    _gen_text: str = field(default="", repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def generated_text(self) -> str:
        return self._gen_text

    def append(self, token_id: int, tokenizer) -> str:
        """Add one generated token; returns its text piece (decoded incrementally, so multi-byte
        characters split over tokens come out right once complete)."""
        self._gen_ids.append(int(token_id))
        full = tokenizer.decode(self._gen_ids, skip_special_tokens=False)
        piece = full[len(self._gen_text):] if full.startswith(self._gen_text) else full
        start = len(self.text)
        self.text += piece
        self._gen_text = full
        self.ids.append(int(token_id))
        self.tokens.append(piece)
        self.roles.append(self.gen_role)
        self.turns.append(self.gen_turn)
        self.content.append(True)
        self.offsets.append((start, len(self.text)))
        return piece

    def turn_starts(self) -> list[tuple[int, int, str]]:
        """``(token index, turn, role)`` at the first token of each turn."""
        out = []
        for i, (t, r) in enumerate(zip(self.turns, self.roles)):
            if i == 0 or t != self.turns[i - 1]:
                out.append((i, t, r))
        return out

    def find(self, needle: str, start_char: int = 0) -> int | None:
        """Index of the token where ``needle`` first begins in the text (None if absent)."""
        pos = self.text.find(needle, start_char)
        if pos < 0:
            return None
        for i, (a, b) in enumerate(self.offsets):
            if a <= pos < b or a >= pos:
                return i
        return None


def _turn_bounds(tokenizer, messages, full: str, style: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Character position where each message's turn starts, and each message's content span.

    A turn starts at its template header. For message ``i >= 1`` that is the length of the
    rendering of ``messages[:i]`` (templates render a conversation prefix as a text prefix). For
    message 0 the header is learnt by rendering it followed by a marker message of the same role,
    so a default system prompt the template injects before it is told apart from the header.
    Anything unusual falls back to the start of the message's content.
    """
    spans, cursor = [], 0
    for m in messages:
        pos = full.find(m["content"], cursor) if m["content"] else cursor
        if pos < 0:
            raise ValueError(f"The chat template altered a {m['role']} message; cannot locate it in the text.")
        spans.append((pos, pos + len(m["content"])))
        cursor = pos + len(m["content"])
    starts = []
    for i, m in enumerate(messages):
        start = spans[i][0]
        if i >= 1:
            try:
                prefix = render(tokenizer, messages[:i], style=style)
                if full.startswith(prefix) and len(prefix) <= spans[i][0]:
                    start = len(prefix)
            except Exception:  # noqa: BLE001 - templates may refuse some prefixes (e.g. role order)
                pass
        elif style == "plain":
            start = 0
        else:
            try:
                marker = "\x00emolib-marker\x00"
                one = render(tokenizer, messages[:1], style=style)
                two = render(tokenizer, [messages[0], {"role": m["role"], "content": marker}], style=style)
                if two.startswith(one):
                    header = two[len(one):two.index(marker)]
                    head_end = spans[0][0]
                    if header and full[:head_end].endswith(header):
                        start = head_end - len(header)
            except Exception:  # noqa: BLE001
                pass
        if i >= 1 and style == "plain" and m["role"] in _PLAIN_TAGS:
            # the blank line between plain turns closes the previous turn; a turn starts at its tag
            tag_at = full.rfind(f"{_PLAIN_TAGS[m['role']]}:", 0, spans[i][0])
            start = tag_at if tag_at >= 0 else start
        starts.append(start)
    return starts, spans


def encode_chat(tokenizer, messages: Sequence[dict[str, str]], add_generation_prompt: bool | None = None,
                continue_final_message: bool | None = None, style: str = "auto") -> ChatTokens:
    """Render ``messages`` and label every token with its role and turn.

    By default a conversation ending on a user (or system) message gets the assistant header
    appended (``add_generation_prompt``), and one ending on an assistant message is left open
    for the model to continue (``continue_final_message``) -- so the result is ready for
    ``generate``. Pass both as False to score a finished transcript exactly as written.
    """
    messages = [_message(i, m) for i, m in enumerate(messages)]
    if not messages:
        raise ValueError("A conversation needs at least one message.")
    chat = use_chat(tokenizer, style)
    style = "chat" if chat else "plain"
    last_is_assistant = messages[-1]["role"] == "assistant"
    if continue_final_message is None:
        continue_final_message = last_is_assistant
    if add_generation_prompt is None:
        add_generation_prompt = not last_is_assistant
    if continue_final_message and add_generation_prompt:
        raise ValueError("Choose add_generation_prompt or continue_final_message, not both.")
    full = render(tokenizer, messages, add_generation_prompt, continue_final_message, style=style)
    starts, spans = _turn_bounds(tokenizer, messages, full, style)
    ids, offsets = encode(tokenizer, full, chat)
    n = len(messages)
    gen_turn = n - 1 if continue_final_message else n
    if not add_generation_prompt:
        gen_start = len(full)
    elif style == "plain":
        gen_start = full.rindex(PLAIN_ASSISTANT)
    else:
        gen_start = len(render(tokenizer, messages, style=style))
    roles, turns, content = [], [], []
    for a, b in offsets:
        turn = -1
        for i in range(n):
            if a >= starts[i]:
                turn = i
        if add_generation_prompt and a >= gen_start and gen_start < len(full):
            turn = n
        role = "system" if turn < 0 else ("assistant" if turn == n else messages[turn]["role"])
        roles.append(role)
        turns.append(turn)
        # the same overlap rule as token_span: a token is content if its characters touch the message's
        content.append(0 <= turn < n and b > a and b > spans[turn][0] and a < max(spans[turn][1], spans[turn][0] + 1))
    return ChatTokens(text=full, ids=ids, tokens=offset_pieces(full, offsets), roles=roles, turns=turns,
                      content=content, offsets=offsets, messages=messages, gen_role="assistant", gen_turn=gen_turn,
                      prompt_len=len(ids), style=style, _gen_text="")


_TAG = re.compile(r"^(Human|Assistant|Person|AI|User):[ \t]?", re.MULTILINE)


def dialogue_messages(text: str) -> list[dict[str, str]]:
    """Split a ``Human: ... / Assistant: ...`` dialogue (the paper's format, our neutral corpus)
    into chat messages; untagged text before the first turn becomes a system message."""
    parts = _TAG.split(text)
    msgs = []
    head = parts[0].strip()
    if head:
        msgs.append({"role": "system", "content": head})
    for tagname, body in zip(parts[1::2], parts[2::2]):
        role = "user" if tagname in {"Human", "Person", "User"} else "assistant"
        msgs.append({"role": role, "content": body.strip()})
    if not any(m["role"] != "system" for m in msgs):
        raise ValueError("No 'Human:' / 'Assistant:' turns found in the dialogue.")
    return msgs
