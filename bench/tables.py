"""The Markdown tables the bench scripts print for the docs (no torch: the table tools start at once)."""

from __future__ import annotations


def markdown_table(header: tuple[str, ...] | list[str], rows: list[list[str]]) -> str:
    """A Markdown table of ``rows`` under ``header``, as the docs print the benches' results."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
