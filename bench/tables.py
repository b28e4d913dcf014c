"""The benchmarks' Markdown tables, in the two shapes they print: one row per result
(`one_row_each`: sizes of one system), or one column per system (`side_by_side`: systems
compared measure by measure). `cell(result, key)` formats one value."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Result = dict[str, Any]
Cell = Callable[[Result, str], str]


def one_row_each(results: Sequence[Result], columns: Sequence[tuple[str, str]], cell: Cell) -> str:
    lines = ["| " + " | ".join(label for label, _ in columns) + " |", "|---" * len(columns) + "|"]
    lines += ["| " + " | ".join(cell(r, key) for _, key in columns) + " |" for r in results]
    return "\n".join(lines)


def side_by_side(
    results: Sequence[Result], name: str, rows: Sequence[tuple[str, str]], cell: Cell
) -> str:
    lines = [
        "| | " + " | ".join(str(r[name]) for r in results) + " |",
        "|---" * (len(results) + 1) + "|",
    ]
    lines += [
        f"| {label} | " + " | ".join(cell(r, key) for r in results) + " |" for label, key in rows
    ]
    return "\n".join(lines)
