"""User docs generated from the code cannot drift: README's options table and the CLI flags come
from CacheConfig's field metadata; options another policy reads warn."""
import dataclasses
import warnings
from pathlib import Path

import pytest

import tokencache
from tokencache.cli import build_parser
from tokencache.cli_args import cache_flags
from tokencache.config import POLICIES, CacheConfig
from tokencache.docs import END, POLICY_END, POLICY_START, START, options, render_into

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_options_table_is_generated_from_the_config():
    text = README.read_text()
    assert text == render_into(text), "README's options table is stale: run `python -m tokencache.docs README.md`"
    block = text.split(START, 1)[1].split(END, 1)[0]
    for field in dataclasses.fields(CacheConfig):
        assert f"| `{field.name}` |" in block
    policies = text.split(POLICY_START, 1)[1].split(POLICY_END, 1)[0]
    for policy in POLICIES:
        assert f"| `{policy}` |" in policies


def test_every_option_has_one_sentence_and_known_readers():
    for o in options():
        assert o.doc and o.doc.endswith(".") and "\n" not in o.doc, o.name
        assert o.used_by is None or set(o.used_by) <= set(POLICIES) - {"none"}, o.name


def test_config_docstring_names_every_policy():
    for policy in POLICIES:
        assert f'"{policy}"' in CacheConfig.__doc__, policy


def test_report_docstring_points_at_the_readme():
    assert "DESIGN.md" not in tokencache.report.__doc__ and "README" in tokencache.report.__doc__


@pytest.mark.parametrize("command", ["demo", "profile"])
def test_cli_has_a_flag_per_option(command):
    parser = build_parser()
    args = parser.parse_args([command, "--clusters", "8", "--cfg-shared-tokens", "false", "--attention", "tokens"])
    assert cache_flags(args) == {"clusters": 8, "cfg_shared_tokens": False, "attention": "tokens"}
    help_text = parser._subparsers._group_actions[0].choices[command].format_help()
    for o in options():
        if o.name not in ("policy", "inner", "num_steps", "timestep_input"):
            assert "--" + o.name.replace("_", "-") in help_text, o.name
    with pytest.raises(SystemExit):
        parser.parse_args([command, "--attention", "sometimes"])


def test_an_option_another_policy_reads_warns():
    with pytest.warns(UserWarning, match=r"clusters=32 is read only by policy 'clusca'; policy 'toca' ignores it"):
        CacheConfig(policy="toca", clusters=32)
    with pytest.warns(UserWarning, match=r"ratio=0.5 .* policies 'toca', 'duca'; policy 'fora'"):
        tokencache.CacheConfig.from_options({"policy": "fora", "ratio": 0.5})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CacheConfig(policy="clusca", clusters=32)
        CacheConfig(policy="taylorseer", warmup=3)       # its own default
        CacheConfig(policy="fora", interval=5, num_steps=20, inner="eager")


def test_demo_passes_cache_flags_through(monkeypatch, tmp_path):
    """`tokencache demo --clusters 8 ...` reaches tokencache.compile of the cached run."""
    import tokencache.demo as demo

    seen = []

    def compile_stub(model, **kw):
        seen.append(kw)
        if kw["policy"] != "none":
            raise RuntimeError("stop")
        return model
    monkeypatch.setattr(demo.tokencache, "compile", compile_stub)
    monkeypatch.setattr(demo, "load_embedded", lambda name: None)
    with pytest.raises(RuntimeError, match="stop"):
        demo.run_demo(policy="clusca", steps=2, samples=1, rounds=1, inner="eager", out=tmp_path,
                      options={"clusters": 8})
    assert seen[1]["policy"] == "clusca" and seen[1]["clusters"] == 8 and seen[1]["num_steps"] == 2
    assert "clusters" not in seen[0]


def test_an_ignored_option_warns_once_per_compile_not_per_generation():
    """A generation of another step count rebuilt the config with dataclasses.replace, which warned again."""
    from tiny_models import generate, noise, reference_case

    case = reference_case()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = tokencache.compile(case.build(), policy="fora", ratio=0.5, num_steps=4, inner="eager")
        for steps in (3, 5):
            with tokencache.generation(compiled, steps=steps):
                generate(case, compiled, noise(case), steps=steps)
    assert sum("ratio=0.5 is read only by" in str(w.message) for w in caught) == 1
