"""User documentation generated from the code, so it cannot drift (tests/test_docs.py checks it):
README's options table from CacheConfig's field metadata, and its policies table from each policy
module's first docstring paragraph and the options that name the policy as a reader.

    python -m tokencache.docs README.md      # rewrite both tables between their markers
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from .config import CacheConfig

START, END = "<!-- options:start -->", "<!-- options:end -->"
POLICY_START, POLICY_END = "<!-- policies:start -->", "<!-- policies:end -->"


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


def policies_table() -> str:
    """One row per policy: what it does (its module docstring's first paragraph) and its options."""
    import importlib
    import inspect

    from .config import POLICIES

    rows = ["| policy | what it does | options it reads (besides the common ones) |", "|---|---|---|"]
    for name in POLICIES:
        doc = inspect.getdoc(importlib.import_module(f"tokencache.policies.{name}")) or ""
        summary = " ".join(doc.split("\n\n")[0].split())
        summary = summary.split(": ", 1)[1] if summary.startswith(name) and ": " in summary else summary
        read = [f"`{o.name}`" for o in options() if o.used_by is not None and name in o.used_by]
        rows.append(f"| `{name}` | {summary} | {', '.join(read) or '—'} |")
    return "\n".join(rows)


def _fill(text: str, start: str, end: str, body: str) -> str:
    if start not in text or end not in text:
        raise ValueError(f"no {start} ... {end} block to fill")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def render_into(text: str) -> str:
    """`text` with the blocks between the markers replaced by the current tables."""
    return _fill(_fill(text, START, END, options_table()), POLICY_START, POLICY_END, policies_table())


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0] if args else "README.md")
    path.write_text(render_into(path.read_text()))
    print(f"wrote the options and policies tables into {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
