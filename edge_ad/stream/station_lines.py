"""Where each key of a TOML file is written, so an error about a value can name its line.

tomllib gives values, not positions, so the text is scanned once: table headers (`[outputs]`,
`[[camera]]`, counted per array, `[station.retry]`) and the keys under them (`key = ...`, the first
part of a dotted key). Multi-line strings are skipped. It is a locator for messages, not a parser:
the file has already been parsed by tomllib when it is used.
"""

from __future__ import annotations

import re

__all__ = ["KeyLines"]

_ARRAY = re.compile(r"^\[\[\s*([^\]]+?)\s*\]\]")
_TABLE = re.compile(r"^\[\s*([^\]]+?)\s*\]")
_KEY = re.compile(r"""^("[^"]*"|'[^']*'|[A-Za-z0-9_-]+)\s*(?:\.[^=]*)?=""")


class KeyLines:
    """Line numbers (1-based) of table headers and keys: `line(table, index, key)`."""

    def __init__(self, text: str) -> None:
        self._keys: dict[tuple[str, int | None, str], int] = {}
        self._headers: dict[tuple[str, int | None], int] = {}
        counts: dict[str, int] = {}
        table: tuple[str, int | None] = ("", None)
        quote: str | None = None
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if quote is not None:                       # inside a multi-line string
                if line.count(quote) % 2 == 1:
                    quote = None
                continue
            if not line or line.startswith("#"):
                continue
            if match := _ARRAY.match(line):
                name = _name(match.group(1))
                counts[name] = counts.get(name, -1) + 1
                table = (name, counts[name])
                self._headers.setdefault(table, number)
                continue
            if match := _TABLE.match(line):
                table = self._sub_table(_name(match.group(1)), counts, number)
                continue
            if match := _KEY.match(line):
                self._keys.setdefault((table[0], table[1], _name(match.group(1))), number)
            for mark in ('"""', "'''"):
                if line.count(mark) % 2 == 1:
                    quote = mark

    def _sub_table(self, name: str, counts: dict[str, int], number: int) -> tuple[str, int | None]:
        """The table a `[name]` header opens: `[camera.settings]` under the latest [[camera]] is that
        camera's `settings` key (so an error about it names this line)."""
        parent, _, child = name.rpartition(".")
        if parent in counts and child:
            self._keys.setdefault((parent, counts[parent], child), number)
            return (name, counts[parent])
        if parent and child:
            self._keys.setdefault((parent, None, child), number)
        self._headers.setdefault((name, None), number)
        return (name, None)

    def line(self, table: str, index: int | None = None, key: str | None = None) -> int | None:
        """The line of `key` in `table` (the `index`-th of an array of tables), else of the table's header,
        else of the key naming the table in its parent (`retry` in [station] for "station.retry"); None
        when none is written (a default)."""
        if key is not None and (table, index, key) in self._keys:
            return self._keys[(table, index, key)]
        if (table, index) in self._headers:
            return self._headers[(table, index)]
        parent, _, child = table.rpartition(".")
        if parent and child:
            return self.line(parent, None, child)
        return None


def _name(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text
