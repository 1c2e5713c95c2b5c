"""Argument types and checks shared by the `tokencache` command's subcommands (cli.py, and
exporters/cli.py for `export`): one home, so neither CLI module imports the other's privates."""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


# options the commands set themselves (--policy, --inner, --steps) or that the shipped models fix
_OWN_FLAGS = {"policy", "inner", "num_steps", "timestep_input"}


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"must be true or false, got {text}")


def _checked(name: str, kind, policy: str):
    """A flag type that parses the text, then lets CacheConfig judge the value (under a policy that
    reads the option), so a bad value is a usage error naming what is allowed."""
    import warnings

    from .config import CacheConfig

    def parse(text: str):
        value = kind(text)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                CacheConfig(**{"policy": policy, name: value})
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return value
    parse.__name__ = getattr(kind, "__name__", name)
    return parse


def add_cache_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per CacheConfig option (`--spatial-bonus 0.5`), typed, with its documentation as
    help (tokencache/docs.py). Unset flags stay None: the option keeps its default. Values are
    checked by CacheConfig, which names the option and what it allows."""
    from .docs import options

    group = parser.add_argument_group("cache options (tokencache.CacheConfig; README \"Options\")")
    for o in options():
        if o.name in _OWN_FLAGS:
            continue
        kind = _boolean if isinstance(o.default, bool) else type(o.default) if o.default is not None else int
        choices = list(o.allowed) if isinstance(o.allowed, tuple) and not isinstance(o.default, bool) else None
        reader = o.used_by[0] if o.used_by else "toca"
        group.add_argument("--" + o.name.replace("_", "-"), dest=f"cache_{o.name}", choices=choices,
                           type=_checked(o.name, kind, reader),
                           default=None, metavar=None if choices else o.name.upper(), help=f"{o.doc} (default {o.default if o.default is not None else 'per policy'})")


def cache_flags(args: argparse.Namespace) -> dict:
    """The cache options given on the command line, by CacheConfig field name."""
    return {k[len("cache_"):]: v for k, v in vars(args).items() if k.startswith("cache_") and v is not None}


class UsageError(ValueError):
    """A user error the CLI reports in one line, with exit code 2."""


def check_output_file(path, flag: str) -> None:
    """`path` can be written as a file: its directory exists and is writable, and it is not a
    directory. Checked before any work, so a bad path costs nothing."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {path}: is a directory, expected a file name")
    parent = p.absolute().parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: {parent} is not an existing directory")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UsageError(f"{flag} {path}: not writable")


def check_output_dir(path, flag: str) -> None:
    """`path` can hold output files: an existing writable directory, or creatable in one."""
    p = Path(path).absolute()
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} {path}: exists and is not a directory")
    existing = next((q for q in (p, *p.parents) if q.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: {existing or p} is not a writable directory")


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
