"""Rendering conversations to text with a model's chat template, and finding the character span of
each assistant turn in that text.

A template with ``{% generation %}`` markers reports its spans while it renders (transformers'
renderer, one compiled template for the whole batch). A template without them is rendered prefix by
prefix: the assistant turn k is what the conversation up to k adds after the generation prompt of
the conversation before k. That only works when each rendering is a prefix of the next; a template
for which it is not gets a ConfigError rather than a guess.
"""

from __future__ import annotations

import re
from typing import Any

from engine.errors import ConfigError

Span = tuple[int, int]
_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


def _template(tokenizer: Any) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: "default" is the one apply_chat_template uses
        template = template.get("default")
    if not template or not isinstance(template, str):
        raise ConfigError(
            "model.base_model: the tokenizer has no chat template, so conversations cannot be rendered; "
            "use a chat model or builtin:tiny-chat"
        )
    return template


def _render(template: str, conversations: list[list[dict[str, str]]], tokenizer: Any, *,
            track: bool, add_generation_prompt: bool = False) -> tuple[list[str], list[list[Span]]]:
    from transformers.utils import chat_template_utils

    render: Any = chat_template_utils.render_jinja_template  # its annotation says str; it is a pair
    texts, spans = render(
        conversations=conversations,
        chat_template=template,
        return_assistant_tokens_mask=track,
        add_generation_prompt=add_generation_prompt,
        **tokenizer.special_tokens_map,
    )
    return list(texts), [list(s) for s in spans] if track else [[] for _ in texts]


def _prefix_spans(template: str, conv: list[dict[str, str]], full: str, tokenizer: Any) -> list[Span]:
    spans: list[Span] = []
    for k, message in enumerate(conv):
        if message["role"] != "assistant":
            continue
        try:
            before = _render(template, [conv[:k]], tokenizer, track=False, add_generation_prompt=True)[0][0]
        except Exception:  # an empty conversation is not renderable by every template
            if k:
                raise
            before = ""
        upto = _render(template, [conv[: k + 1]], tokenizer, track=False)[0][0]
        if not (upto.startswith(before) and full.startswith(upto)) or len(upto) <= len(before):
            raise ConfigError(
                "model.base_model: the chat template has no {% generation %} markers and its output is not "
                "prefix-stable, so assistant tokens cannot be told apart; add {% generation %} ... "
                "{% endgeneration %} around the assistant content in the template"
            )
        spans.append((len(before), len(upto)))
    return spans


def render_batch(conversations: list[list[dict[str, str]]], tokenizer: Any, *, spans: bool = True
                 ) -> tuple[list[str | None], list[list[Span]], list[str]]:
    """Render each conversation. Returns the texts (None where the template refused one), one span
    per assistant message (when ``spans``), and the refusal messages ("" where none)."""
    template = _template(tokenizer)
    marked = bool(_GENERATION.search(template))
    n = len(conversations)
    texts: list[str | None] = [None] * n
    found: list[list[Span]] = [[] for _ in range(n)]
    errors = [""] * n
    track = spans and marked
    try:
        rendered, tracked = _render(template, conversations, tokenizer, track=track)
        texts[:] = rendered
        found[:] = tracked
    except Exception:
        # One bad conversation must not sink the batch: find it by rendering them one at a time.
        for i, conv in enumerate(conversations):
            try:
                one, one_spans = _render(template, [conv], tokenizer, track=track)
                texts[i], found[i] = one[0], one_spans[0]
            except Exception as exc:  # template errors are the data's problem, reported per example
                errors[i] = f"{type(exc).__name__}: {exc}"
    if spans:
        for i, conv in enumerate(conversations):
            text = texts[i]
            if text is None:
                continue
            wanted = sum(1 for m in conv if m["role"] == "assistant")
            if len(found[i]) != wanted:
                found[i] = _prefix_spans(template, conv, text, tokenizer)
    return texts, found, errors

