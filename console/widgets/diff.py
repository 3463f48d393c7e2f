"""Which parts of a text block changed, so a widget asks the terminal to redraw only those.

Textual sends the terminal only a widget's dirty regions, but ``refresh()`` with no region marks
the whole widget dirty: a loss plot whose title and right edge moved was sent whole, about half
of the console's bytes while training. ``changed_regions`` compares two renderings cell by cell
(character and style) and returns, per changed line, the span from its first to its last changed
cell; ``refresh(*regions)`` then sends just those.
"""

from __future__ import annotations

from rich.cells import cell_len
from rich.style import Style
from rich.text import Text
from textual.geometry import Region

Cells = list[tuple[str, tuple[Style | str, ...]]]


def cells_of(line: Text) -> Cells:
    """One (character, styles applied to it in order) per character: equal cells draw alike."""
    plain = line.plain
    styles: list[tuple[Style | str, ...]] = [(line.style,)] * len(plain)
    for span in line.spans:
        for i in range(max(0, span.start), min(span.end, len(plain))):
            styles[i] = (*styles[i], span.style)
    return list(zip(plain, styles, strict=True))


def _span(old: Cells, new: Cells) -> tuple[int, int] | None:
    """(first, end) character indices where two lines differ, or None when equal."""
    if old == new:
        return None
    first = 0
    limit = min(len(old), len(new))
    while first < limit and old[first] == new[first]:
        first += 1
    end_old, end_new = len(old), len(new)
    while end_old > first and end_new > first and old[end_old - 1] == new[end_new - 1]:
        end_old -= 1
        end_new -= 1
    return first, max(end_old, end_new)


def changed_regions(old: list[Cells] | None, new: list[Cells], width: int) -> list[Region] | None:
    """Regions (in content coordinates) to refresh to go from ``old`` to ``new``; None when
    everything must be redrawn (nothing drawn before, or another number of lines)."""
    if old is None or len(old) != len(new):
        return None
    regions = []
    for y, (before, after) in enumerate(zip(old, new, strict=True)):
        span = _span(before, after)
        if span is None:
            continue
        first, end = span
        longer = after if len(after) >= len(before) else before
        x0 = sum(cell_len(ch) for ch, _ in longer[:first])
        x1 = x0 + sum(cell_len(ch) for ch, _ in longer[first:end])
        if len(after) != len(before):
            x1 = max(x1, width)  # the line's length changed: clear to its end
        regions.append(Region(x0, y, max(1, x1 - x0), 1))
    return regions
