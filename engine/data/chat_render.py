"""Rendering conversations to text with a model's chat template, and finding the character span of
each assistant turn in that text.

A template with ``{% generation %}`` markers reports its spans while it renders (transformers'
renderer, one compiled template for the whole batch). A template without them is rendered prefix by
prefix: the assistant turn k is what the conversation up to k adds after the generation prompt of
the conversation before k. That only works when each rendering is a prefix of the next; a template
for which it is not gets a ConfigError rather than a guess.

Jinja costs about as much as tokenizing, so most conversations skip it: when a template only ever
prints message content (checked on its syntax tree), what it renders around the contents depends on
the role sequence alone. That "skeleton" is found once per role sequence by rendering two unlike
probe contents, then filled by string joins; the first conversation of each role sequence in a
batch is still rendered by the template and compared, and any difference distrusts the template.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trainconsole.engine.errors import ConfigError

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


@dataclass(frozen=True)
class _Skeleton:
    """What a template renders around the contents of one role sequence: ``pieces[k]`` comes before
    message k's content (the last piece after the final one), and each assistant turn's span is its
    content's span widened by fixed amounts (the turn markers inside the generation block)."""

    pieces: tuple[str, ...]
    widen: tuple[tuple[int, int], ...]  # per assistant message: (chars before content, chars after)

    def fill(self, contents: Sequence[str], assistant: Sequence[int]) -> tuple[str, list[Span]]:
        parts: list[str] = []
        starts: list[int] = []
        at = 0
        for piece, content in zip(self.pieces, contents, strict=False):
            at += len(piece)
            starts.append(at)
            at += len(content)
            parts.append(piece)
            parts.append(content)
        parts.append(self.pieces[-1])
        spans = [(starts[k] - before, starts[k] + len(contents[k]) + after)
                 for k, (before, after) in zip(assistant, self.widen, strict=True)]
        return "".join(parts), spans


# Probe contents: two unlike sets, so a template that trims, escapes or otherwise edits content
# (or branches on its edges) renders them differently and is never taken for a verbatim one.
_PROBES = ("\x00{}\x01", " \n\x00{} probe\x01\n ")
# Keyed by the template and the special tokens it is rendered with.
_SKELETONS: dict[tuple[str, tuple[str, ...]], _Skeleton | None] = {}
_VERBATIM: dict[str, bool] = {}  # still trusted to insert content verbatim


def _probe(template: str, roles: tuple[str, ...], tokenizer: Any, marked: bool) -> _Skeleton | None:
    results = []
    assistant = [k for k, r in enumerate(roles) if r == "assistant"]
    for pattern in _PROBES:
        contents = [pattern.format(k) for k in range(len(roles))]
        conv = [{"role": r, "content": c} for r, c in zip(roles, contents, strict=True)]
        try:
            texts, tracked = _render(template, [conv], tokenizer, track=marked)
        except Exception:  # the template refuses this role sequence: the slow path reports it
            return None
        text, spans = texts[0], tracked[0]
        pieces, widen, at = [], [], 0
        starts = []
        for content in contents:
            found = text.find(content, at)
            if found < 0 or text.count(content) != 1:
                return None
            pieces.append(text[at:found])
            starts.append(found)
            at = found + len(content)
        pieces.append(text[at:])
        if marked:
            if len(spans) != len(assistant):
                return None
            for k, (s, e) in zip(assistant, spans, strict=True):
                end = starts[k] + len(contents[k])
                if not s <= starts[k] <= end <= e:
                    return None
                widen.append((starts[k] - s, e - end))
        results.append(_Skeleton(tuple(pieces), tuple(widen)))
    return results[0] if results[0] == results[1] else None


def _prints_content_only(template: str) -> bool:
    """True when the template only ever prints a message's content (alone or concatenated), never
    tests, filters, slices or assigns it: then the text it renders around the content cannot
    depend on the content, and skeletons are exact."""
    from jinja2 import nodes
    from transformers.utils import chat_template_utils

    compile_template: Any = chat_template_utils._compile_jinja_template
    try:
        tree = compile_template(template).environment.parse(template)
    except Exception:  # let the real renderer report it
        return False

    def is_content(node: nodes.Node) -> bool:
        if isinstance(node, nodes.Getitem):
            return isinstance(node.arg, nodes.Const) and node.arg.value == "content"
        return isinstance(node, nodes.Getattr) and node.attr == "content"

    def safe(node: nodes.Node, printed: bool) -> bool:
        if is_content(node):
            return printed
        if isinstance(node, nodes.Const) and node.value == "content":
            return False  # reached some other way (message.get('content'), a loop over keys): distrust
        if isinstance(node, nodes.Output):
            return all(safe(child, True) for child in node.nodes)
        keeps = printed and isinstance(node, nodes.Add | nodes.Concat)
        return all(safe(child, keeps) for child in node.iter_child_nodes())

    return safe(tree, False)


def _identity(template: str, tokenizer: Any) -> str:
    return template + "\x00" + repr(sorted(tokenizer.special_tokens_map.items()))


def _skeleton(template: str, identity: str, roles: tuple[str, ...], tokenizer: Any,
              marked: bool) -> _Skeleton | None:
    key = (identity, roles)
    if key not in _SKELETONS:
        if len(_SKELETONS) > 4096:  # role sequences are few in practice; never let this grow unbounded
            _SKELETONS.clear()
        _SKELETONS[key] = _probe(template, roles, tokenizer, marked)
    return _SKELETONS[key]


def _fast(template: str, conversations: list[list[dict[str, str]]], tokenizer: Any, marked: bool,
          spans: bool) -> dict[int, tuple[str, list[Span]]]:
    """Render what can be rendered by filling skeletons; checked against the template for the first
    conversation of each role sequence in the batch (a template that branches on content is then
    caught and never trusted again)."""
    identity = _identity(template, tokenizer)
    if identity not in _VERBATIM:
        _VERBATIM[identity] = _prints_content_only(template)
    if not _VERBATIM[identity] or (spans and not marked):
        return {}
    done: dict[int, tuple[str, list[Span]]] = {}
    checked: set[tuple[str, ...]] = set()
    for i, conv in enumerate(conversations):
        roles = tuple(m["role"] for m in conv)
        contents = [m["content"] for m in conv]
        if not all(contents):  # templates often branch on empty content: leave those to the template
            continue
        skeleton = _skeleton(template, identity, roles, tokenizer, marked)
        if skeleton is None:
            continue
        assistant = [k for k, r in enumerate(roles) if r == "assistant"] if marked else []
        text, found = skeleton.fill(contents, assistant)
        if roles not in checked:
            checked.add(roles)
            try:
                ref_texts, ref_spans = _render(template, [conv], tokenizer, track=marked)
            except Exception:
                ref_texts, ref_spans = [None], [[]]  # type: ignore[list-item]
            if ref_texts[0] != text or (marked and [tuple(x) for x in ref_spans[0]] != found):
                _VERBATIM[identity] = False
                return {}
        done[i] = (text, found)
    return done


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
    fast = _fast(template, conversations, tokenizer, marked, spans)
    for i, (text, fast_spans) in fast.items():
        texts[i], found[i] = text, fast_spans
    slow = [i for i in range(n) if i not in fast]
    if not slow:
        return texts, found, errors
    try:
        rendered, tracked = _render(template, [conversations[i] for i in slow], tokenizer, track=track)
        for i, text, spans_i in zip(slow, rendered, tracked, strict=True):
            texts[i], found[i] = text, spans_i
    except Exception:
        # One bad conversation must not sink the batch: find it by rendering them one at a time.
        for i in slow:
            try:
                one, one_spans = _render(template, [conversations[i]], tokenizer, track=track)
                texts[i], found[i] = one[0], one_spans[0]
            except Exception as exc:  # template errors are the data's problem, reported per example
                errors[i] = f"{type(exc).__name__}: {exc}"
    if spans:
        for i in slow:
            conv = conversations[i]
            full = texts[i]
            if full is None:
                continue
            wanted = sum(1 for m in conv if m["role"] == "assistant")
            if len(found[i]) != wanted:
                found[i] = _prefix_spans(template, conv, full, tokenizer)
    return texts, found, errors

