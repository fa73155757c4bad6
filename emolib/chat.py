"""Formatting a user turn for the model, and finding the tokens the paper reads.

The paper reads its probes at two places of a ``Human: {prompt}`` / ``Assistant:`` transcript:

* the **assistant-header token** -- the colon after ``Assistant``, the last token before the reply,
  where the model has read the whole user turn and is about to answer (the paper's "Assistant
  colon"). For a chat-templated model the equivalent is the *last token of the assistant header*
  that the template's generation prompt adds (ChatML ``<|im_start|>assistant\\n`` -> the ``\\n``;
  Llama-3 ``<|start_header_id|>assistant<|end_header_id|>\\n\\n`` -> the ``\\n\\n``; Gemma
  ``<start_of_turn>model\\n`` -> the ``\\n``);
* the **user's last token** -- the last token of the user's own words (the paper's final ".").

:func:`format_user_turn` builds the prompt (the tokenizer's chat template when it has one, else the
paper's plain ``Human:``/``Assistant:`` format) and returns a :class:`FormattedPrompt` whose
``header_index`` and ``user_last_index`` are those two positions. They are found from character
offsets of the rendered text, never by re-tokenizing substrings (BPE merges at the edges would
shift them), and checked: a template whose generation prompt adds nothing raises rather than
silently reading the user's last token as the "header".

Reuse: any stage that reads "at the Assistant colon" should call
``format_user_turn(tok, text).header_index``; :func:`format_many` does a list at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

PLAIN_USER = "Human: "
PLAIN_ASSISTANT = "Assistant:"


@dataclass
class FormattedPrompt:
    """A user turn rendered for the model, as token ids with the positions the probes read.

    ``user_span`` is the token span ``[start, stop)`` of the user's words; ``header_span`` the
    tokens the generation prompt added (the assistant header); ``header_index`` its last token and
    ``user_last_index`` the user's last token. ``style`` is ``"chat"`` or ``"plain"``.
    """

    text: str
    ids: list[int]
    user_span: tuple[int, int]
    header_span: tuple[int, int]
    style: str
    user: str = ""
    tokens: list[str] = field(default_factory=list)

    @property
    def header_index(self) -> int:
        return self.header_span[1] - 1

    @property
    def user_last_index(self) -> int:
        return self.user_span[1] - 1

    def __len__(self) -> int:
        return len(self.ids)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _render_chat(tokenizer, user: str, system: str | None) -> tuple[str, int, int]:
    """Rendered text, char start of the user words, char start of the generation prompt."""
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    without = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    full = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    if full.startswith(without) and len(full) > len(without):
        header_start = len(without)
    else:
        # Templates that end the user turn differently with/without a generation prompt: the header
        # starts after the user's words and the user-turn closing text (whatever follows the words
        # up to the first character that differs is still the user turn's frame).
        end_user = full.rfind(user)
        if end_user < 0:
            raise ValueError("The chat template altered the user message; cannot locate it in the prompt.")
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


def _render_plain(user: str, system: str | None) -> tuple[str, int, int]:
    prefix = (f"{system}\n\n" if system else "") + PLAIN_USER
    head = prefix + user + "\n\n"
    return head + PLAIN_ASSISTANT, len(prefix), len(head)


def _token_span(offsets: Sequence[tuple[int, int]], start: int, stop: int) -> tuple[int, int]:
    """Tokens overlapping characters ``[start, stop)`` (tokens with empty offsets -- special
    tokens rendered from the template -- count by position when they sit inside the range)."""
    hits = [i for i, (a, b) in enumerate(offsets) if (b > a and b > start and a < stop) or (a == b and start <= a < stop)]
    if not hits:
        raise ValueError(f"No token covers characters [{start}, {stop}).")
    return hits[0], hits[-1] + 1


def format_user_turn(tokenizer, user: str, system: str | None = None, style: str = "auto") -> FormattedPrompt:
    """Render one user message as the model's prompt, up to and including the assistant header.

    ``style``: ``"auto"`` (chat template if the tokenizer has one, else plain), ``"chat"`` or
    ``"plain"`` (the paper's ``Human: ...\\n\\nAssistant:``). Templates that insert a default
    system prompt (SmolLM2's does) keep it: that is what the model saw in training.
    """
    if not user or not user.strip():
        raise ValueError("The user message is empty.")
    if style not in {"auto", "chat", "plain"}:
        raise ValueError(f"style must be 'auto', 'chat' or 'plain', got {style!r}")
    use_chat = has_chat_template(tokenizer) if style == "auto" else style == "chat"
    if use_chat and not has_chat_template(tokenizer):
        raise ValueError("style='chat' but this tokenizer has no chat template; use style='plain'.")
    if use_chat:
        text, u0, h0 = _render_chat(tokenizer, user, system)
    else:
        text, u0, h0 = _render_plain(user, system)
    # A rendered chat template already holds its special tokens; the plain format gets the
    # tokenizer's usual ones (a BOS for models that use one).
    enc = tokenizer(text, add_special_tokens=not use_chat, return_offsets_mapping=True)
    if "offset_mapping" not in enc:
        raise ValueError("This tokenizer gives no offset mapping; a fast (Rust) tokenizer is needed.")
    ids = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    user_span = _token_span(offsets, u0, u0 + len(user.rstrip()))
    header_span = _token_span(offsets, h0, len(text))
    if header_span[0] < user_span[1]:
        # The last user token and the first header token merged (possible in plain formats with
        # unusual tokenizers); the header then starts after the user's last token.
        header_span = (user_span[1], header_span[1])
    if header_span[1] != len(ids) or header_span[0] >= header_span[1]:
        raise ValueError("The assistant header is not at the end of the prompt; the template is unusual.")
    return FormattedPrompt(text=text, ids=ids, user_span=user_span, header_span=header_span,
                           style="chat" if use_chat else "plain", user=user,
                           tokens=[tokenizer.decode([i]) for i in ids])


def format_many(tokenizer, users: Sequence[str], system: str | None = None, style: str = "auto") -> list[FormattedPrompt]:
    """:func:`format_user_turn` over a list."""
    return [format_user_turn(tokenizer, u, system=system, style=style) for u in users]


def header_token(tokenizer, style: str = "auto") -> str:
    """The text of the assistant-header readout token for this tokenizer (e.g. ``"\\n"`` or ``":"``)."""
    fp = format_user_turn(tokenizer, "Hello.", style=style)
    return fp.tokens[fp.header_index]
