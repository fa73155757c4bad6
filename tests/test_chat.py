"""The assistant-header read-out token (the paper's "Assistant colon") under several chat formats."""

from __future__ import annotations

import copy

import pytest

from emolib.chat import (
    build_prompt,
    continuation_ids,
    encode_chat,
    format_many,
    format_user_turn,
    header_token,
    prompt_text,
)

USER = "My dog has been missing for 3 days."

LLAMA3 = ("{{ '<|begin_of_text|>' }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n'"
          " + m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
GEMMA = ("{{ '<bos>' }}{% for m in messages %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role'])"
         " + '\n' + m['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
         "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")

MISTRAL = ("{{ '<s>' }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
           "{% else %}{{ m['content'] + '</s>' }}{% endif %}{% endfor %}")
CHATML_NO_SYSTEM = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
                    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# format -> (template or "own" (the default tokenizer's) or None (no template), special tokens, header text)
FORMATS = {
    "chatml-smollm2": ("own", (), "<|im_start|>assistant\n"),
    "chatml-qwen2": (CHATML_NO_SYSTEM, (), "<|im_start|>assistant\n"),
    "llama3": (LLAMA3, ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
               "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    "gemma": (GEMMA, ("<bos>", "<start_of_turn>", "<end_of_turn>"), "<start_of_turn>model\n"),
    "mistral": (MISTRAL, ("<s>", "</s>", "[INST]", "[/INST]"), " [/INST]"),
    "no-template": (None, (), "Assistant:"),
}


def _with_template(tok, template, specials=()):
    t = copy.deepcopy(tok)
    if specials:
        t.add_special_tokens({"additional_special_tokens": list(specials)})
    t.chat_template = template
    return t


def _check_user_span(fp):
    a, b = fp.user_span
    assert "".join(fp.tokens[a:b]).strip() == USER  # a leading space may merge into the first token
    assert fp.user_last_index == b - 1 and fp.tokens[fp.user_last_index] == "."


def test_chatml_default_template(tiny):
    _, tok = tiny
    fp = format_user_turn(tok, USER)
    assert fp.style == "chat"
    assert fp.header_index == len(fp.ids) - 1
    assert fp.tokens[fp.header_span[0]:] == ["<|im_start|>", "ass", "istant", "\n"]
    assert fp.tokens[fp.header_index] == "\n"
    assert "You are a helpful AI assistant" in fp.text  # the template's default system prompt is kept
    _check_user_span(fp)
    assert header_token(tok) == "\n"


def test_llama3_style_template(tiny):
    _, tok = tiny
    t = _with_template(tok, LLAMA3, ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])
    fp = format_user_turn(t, USER)
    assert fp.tokens[fp.header_index] == "\n\n"
    assert fp.tokens[fp.header_index - 1] == "<|end_header_id|>"
    assert fp.tokens[fp.header_span[0]] == "<|start_header_id|>"
    assert fp.tokens[fp.user_last_index + 1] == "<|eot_id|>"
    _check_user_span(fp)


def test_gemma_style_template(tiny):
    _, tok = tiny
    t = _with_template(tok, GEMMA, ["<bos>", "<start_of_turn>", "<end_of_turn>"])
    fp = format_user_turn(t, USER)
    assert fp.tokens[fp.header_span[0]:] == ["<start_of_turn>", "model", "\n"]
    assert fp.tokens[fp.header_index] == "\n"
    _check_user_span(fp)


def test_plain_human_assistant_format(tiny):
    _, tok = tiny
    t = _with_template(tok, None)
    fp = format_user_turn(t, USER)
    assert fp.style == "plain"
    assert fp.text.endswith("Human: " + USER + "\n\nAssistant:")
    assert fp.tokens[fp.header_index] == ":"
    assert "".join(fp.tokens[fp.header_span[0]:]) == "Assistant:"
    _check_user_span(fp)
    # the plain style can be forced on a chat tokenizer too
    assert format_user_turn(tok, USER, style="plain").tokens[-1] == ":"


def test_system_prompt_and_many(tiny):
    _, tok = tiny
    fps = format_many(tok, ["First one.", "A second, longer message here."], system="Be brief.")
    assert all("Be brief." in fp.text and "SmolLM" not in fp.text for fp in fps)
    assert [fp.tokens[fp.user_last_index] for fp in fps] == [".", "."]


def test_errors(tiny):
    _, tok = tiny
    with pytest.raises(ValueError, match="empty"):
        format_user_turn(tok, "   ")
    with pytest.raises(ValueError, match="no chat template"):
        format_user_turn(_with_template(tok, None), USER, style="chat")
    no_header = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    with pytest.raises(ValueError, match="no assistant header"):
        format_user_turn(_with_template(tok, no_header), USER)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_caller_gets_the_same_spans(tiny, fmt):
    """01 (prompt_text), 03 (format_user_turn), 05 (encode_chat) and 06 (build_prompt, with and without a
    prefill) render one user turn identically and agree on its user and header tokens."""
    _, tok = tiny
    template, specials, header = FORMATS[fmt]
    t = tok if template == "own" else _with_template(tok, template, specials)
    fp = format_user_turn(t, USER)  # 03
    _check_user_span(fp)
    a, b = fp.header_span
    assert "".join(fp.tokens[a:b]).strip() == header.strip() and b == len(fp.ids)
    assert prompt_text(t, USER) == fp.text  # 01
    bp = build_prompt(t, USER)  # 06, no prefill
    assert bp.ids == fp.ids and bp.spans == fp.spans
    pre = build_prompt(t, USER, prefill="I feel")  # 06, prefilled reply
    # the header's text and first token are the same; its last token may merge with the prefill ("\n\nI")
    assert pre.spans["user"] == fp.spans["user"] and pre.spans["header"][0] == a
    assert "".join(pre.tokens[slice(*pre.spans["header"])]).strip() == header.strip()
    assert "".join(pre.tokens[slice(*pre.spans["prefill"])]).strip() == "I feel"
    assert pre.spans["assistant"] == (a, len(pre.ids))
    assert continuation_ids(t, pre, " calm")
    chat = encode_chat(t, [{"role": "user", "content": USER}])  # 05
    assert chat.ids == fp.ids
    user_tokens = [i for i, (r, c) in enumerate(zip(chat.roles, chat.content)) if r == "user" and c]
    assert user_tokens == list(range(*fp.user_span))
    if fmt != "mistral":  # a template with no generation prompt has no assistant-turn tokens yet
        assert [i for i, turn in enumerate(chat.turns) if turn == 1] == list(range(a, b))
