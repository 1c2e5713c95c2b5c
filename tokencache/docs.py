"""User documentation generated from the code: README's options table from CacheConfig's field
metadata, so the two cannot drift (tests/test_docs.py checks it).

    python -m tokencache.docs README.md      # rewrite the table between its markers
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from .config import CacheConfig

START, END = "<!-- options:start -->", "<!-- options:end -->"


@dataclasses.dataclass(frozen=True)
class OptionDoc:
    name: str
    default: object
    allowed: tuple | str | None         # the choices, or a phrase ("integer >= 1")
    doc: str
    used_by: tuple[str, ...] | None     # None: every policy


def options() -> list[OptionDoc]:
    return [OptionDoc(f.name, f.default, f.metadata.get("allowed"), f.metadata["doc"], f.metadata.get("used_by"))
            for f in dataclasses.fields(CacheConfig)]


def _value(v) -> str:
    return "policy's" if v is None else f'`"{v}"`' if isinstance(v, str) else f"`{v}`"


def options_table() -> str:
    rows = ["| option | default | allowed | read by | meaning |", "|---|---|---|---|---|"]
    for o in options():
        allowed = ", ".join(_value(a) for a in o.allowed) if isinstance(o.allowed, tuple) else (o.allowed or "")
        readers = "all" if o.used_by is None else ", ".join(o.used_by)
        rows.append(f"| `{o.name}` | {_value(o.default)} | {allowed} | {readers} | {o.doc} |")
    return "\n".join(rows)


def render_into(text: str) -> str:
    """`text` with the block between the markers replaced by the current table."""
    if START not in text or END not in text:
        raise ValueError(f"no {START} ... {END} block to fill")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{options_table()}\n{END}{tail}"


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0] if args else "README.md")
    path.write_text(render_into(path.read_text()))
    print(f"wrote the options table into {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
