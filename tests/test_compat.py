"""Private PyTorch APIs stay in tokencache/compat.py, and the declared torch range is the tested one."""
from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest

from tokencache import compat

PACKAGE = Path(compat.__file__).parent
ROOT = PACKAGE.parent

# In code (strings and comments aside): a private attribute or module anywhere below `torch`
# (torch._dynamo, torch._C, torch.ops.mkldnn._linear_pointwise, torch.utils._python_dispatch), and
# private attributes Dynamo or ATen put on objects tokencache gets.
PRIVATE_CODE = [
    re.compile(r"\btorch(?:\.[A-Za-z]\w*)*\._[A-Za-z]"),
    re.compile(r"\b_C\."),
    re.compile(r"\b(_dynamo_source|_orig_mod|_version|_debug_get_cache_entry_list|_linear_pointwise"
               r"|_reorder_linear_weight)\b"),
    re.compile(r"\b(TracingContext|CompileContext|FakeTensorMode|BackendCompilerFailed)\b"),
]
# As string literals: the keys and attribute names Dynamo leaves on graphs and nodes.
PRIVATE_KEYS = {"nn_module_stack", "grapharg", "dynamo_compile_id", "compile_subgraph_reason", "traced_code",
                "_dynamo_source", "_orig_mod"}


def _code_and_strings(path: Path) -> tuple[str, list[tuple[int, str]]]:
    """The file's code with every string literal emptied and comments dropped; its string literals."""
    tokens, strings = [], []
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type == tokenize.STRING:
            strings.append((tok.start[0], tok.string))
            tokens.append((tok.type, '""'))
        elif tok.type == tokenize.COMMENT:
            continue
        else:
            tokens.append((tok.type, tok.string))
    return re.sub(r"\s*\.\s*", ".", tokenize.untokenize(tokens)), strings   # untokenize spaces out "torch . _C"


def _private_uses(path: Path) -> list[str]:
    code, strings = _code_and_strings(path)
    found = [f"{m.group(0)!r}" for pattern in PRIVATE_CODE for m in pattern.finditer(code)]
    for line, literal in strings:
        try:
            value = eval(literal, {})          # a plain literal: its value
        except Exception:
            continue                           # an f-string with expressions: not a key
        if value in PRIVATE_KEYS:
            found.append(f"string {literal} (line {line})")
    return found


def test_private_torch_apis_only_in_compat():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == Path(compat.__file__):
            continue
        uses = _private_uses(path)
        if uses:
            offenders[str(path.relative_to(ROOT))] = uses
    assert not offenders, ("private torch APIs outside tokencache/compat.py (add a function there and call it): "
                           f"{offenders}")


def test_the_check_sees_private_uses(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import torch\nx = torch._dynamo.config.recompile_limit  # torch._ in a comment is fine\n"
                      "y = node.meta.get('nn_module_stack')\nz = w._version\nmsg = 'torch._dynamo in a message'\n")
    uses = _private_uses(sample)
    assert len(uses) == 3, uses


def test_tested_torch_range():
    assert compat.untested_torch() is None, "the installed torch is outside compat.TESTED_TORCH: test it, then widen"
    assert compat.untested_torch("2.13.1+cpu") is None
    assert "torch >=2.13,<2.14" in compat.untested_torch("2.12.0")
    assert compat.untested_torch("2.14.0") is not None


def test_declared_range_matches_compat():
    """pyproject.toml declares the range compat.py checks."""
    (low_major, low_minor), (high_major, high_minor) = compat.TESTED_TORCH
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"torch>={low_major}.{low_minor},<{high_major}.{high_minor}"' in pyproject


@pytest.mark.parametrize("raw, path", [
    ("L['self'].__dict__['_modules']['transformer_blocks'].0.attn1.to_q", "transformer_blocks.0.attn1.to_q"),
    ("L['self']._modules['blocks']._modules['3']", "blocks.3"),
    ("L['self']", ""),
])
def test_normalise_module_path(raw, path):
    assert compat.normalise_module_path(raw) == path
