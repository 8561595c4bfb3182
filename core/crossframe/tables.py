"""Tables for people: rich on a terminal, at the terminal's own width; plain aligned text when piped.

Rich sizes a console that is not a terminal at 80 columns and folds long cells ("tensorflo / w"),
which is wrong in a log file or a pipe. :func:`show_table` prints a rich table only when the
output is a terminal, and otherwise a plain layout: one line per row (more only where a cell holds
several lines), columns padded to their widest cell, no colours, nothing folded.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import IO, Any

#: a cell: its text, or ``(text, rich style)``; the style is used on a terminal only
Cell = str | tuple[str, str]


def _text(cell: Cell) -> str:
    return cell[0] if isinstance(cell, tuple) else str(cell)


def is_terminal(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default: stdout) is an interactive terminal."""
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def plain_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    """The table as plain text: the title, a header line, a rule, then the rows; never wrapped."""
    cells = [[_text(c).splitlines() or [""] for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, lines in enumerate(row):
            widths[i] = max(widths[i], *(len(line) for line in lines))

    def line(parts: Sequence[str]) -> str:
        return "  ".join(p.ljust(w) for p, w in zip(parts, widths, strict=True)).rstrip()

    out = [title] if title else []
    out += [line(headers), line(["-" * w for w in widths])]
    for row in cells:
        height = max(len(lines) for lines in row)
        for k in range(height):
            out.append(line([lines[k] if k < len(lines) else "" for lines in row]))
    return "\n".join(out)


def rich_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Cell]]) -> Any:
    """The table as a :class:`rich.table.Table` (styles applied, long cells folded to fit)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title or None)
    for h in headers:
        table.add_column(h, overflow="fold")
    for row in rows:
        table.add_row(*(Text(c[0], style=c[1]) if isinstance(c, tuple) else Text(str(c)) for c in row))
    return table


def show_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Cell]], *,
               console: Any = None, stream: IO[str] | None = None) -> None:
    """Print a table: on ``console`` (a rich Console) if given; else rich on a terminal, plain text otherwise.

    ``stream`` defaults to stdout. A rich console created here takes the terminal's width.
    """
    if console is not None:
        console.print(rich_table(title, headers, rows))
        return
    stream = sys.stdout if stream is None else stream
    if is_terminal(stream):
        from rich.console import Console

        Console(file=stream).print(rich_table(title, headers, rows))
    else:
        stream.write(plain_table(title, headers, rows) + "\n")
        stream.flush()


__all__ = ["Cell", "is_terminal", "plain_table", "rich_table", "show_table"]
