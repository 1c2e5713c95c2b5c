"""Which diffusers transformer classes tokencache caches, and how: every entry of the model zoo
(tokencache/models/zoo.py) through a 10-step denoising loop under torch.compile(backend="tokencache")
with policies none / toca / fora, plus toca at K = N (ratio=1.0, attention="tokens") to check that a
token-wise step is exact against the uncompiled model. Each run is isolated: Dynamo is reset before
it and any exception is recorded, never raised.

    python benchmarks/coverage.py                       # all entries, dynamic=False and Dynamo's default
    python benchmarks/coverage.py --quick --only Flux,SD3

Writes a markdown table (--out, default benchmarks/coverage.md) and the raw runs as JSON next to it.
Status per class and policy:
    token-wise        caching active with at least one token-wise region
    module-level      caching active, whole regions reused, none token-wise
    no-op             no fallback reason, yet the generation costs >= 99 % of the uncached FLOPs
    fallback: <why>   tokencache declined and ran the model uncached (report().fallback_reason)
    crash: <error>    the compiled run, or report(), raised
"""
from __future__ import annotations

import argparse
import json
import os
import re
import platform
import signal
import time
import traceback
import warnings
from contextlib import contextmanager
from datetime import date

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from tqdm import tqdm

import tokencache
from tokencache.models import zoo

STEPS = 10
EXACT_TOL = 1e-4
# (label, options). The exactness run keeps a fresh step every 3 so that token-wise steps occur.
SETTINGS = {
    "none": dict(policy="none"),
    "toca": dict(policy="toca"),
    "fora": dict(policy="fora"),
    "toca K=N": dict(policy="toca", ratio=1.0, attention="tokens", interval=3),
}
# Dynamo's default (automatic dynamic shapes) is what most users run; dynamic=False is what tokencache
# asks for. None here means "do not pass dynamic".
DYNAMIC = {"static": False, "default": None}


class RunTimeout(Exception):
    pass


@contextmanager
def time_limit(seconds: int):
    """A run that hangs (a pathological compile) must not stop the survey."""
    def expire(signum, frame):
        raise RunTimeout(f"run exceeded {seconds} s")
    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def short(exc: BaseException) -> str:
    """'Type: message' on one line, with the innermost tokencache frame when there is one (where to look)."""
    msg = " ".join(str(exc).split())[:240]
    where = ""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if "tokencache" in frame.filename:
            where = f" [{frame.filename.split('tokencache', 1)[1].lstrip('/')}:{frame.lineno}]"
            break
    return f"{type(exc).__name__}: {msg}{where}"


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm().clamp_min(1e-12)).item()


def summarise_report(rep: dict) -> dict:
    regions = rep.get("regions") or []
    flops, uncached = rep.get("flops_per_generation"), rep.get("flops_uncached_generation")
    return {
        "fallback_reason": rep.get("fallback_reason"),
        "regions": len(regions),
        "token_wise_regions": sum(1 for r in regions if r.get("token_wise")),
        "region_kinds": sorted({r.get("kind") for r in regions if r.get("kind")}),
        "non_token_wise": sorted({f"{r.get('kind')}: {r.get('reason')}" for r in regions
                                  if not r.get("token_wise") and r.get("reason")}),
        "rejected_modules": rep.get("rejected_modules") or [],
        "flop_fraction": (flops / uncached) if flops is not None and uncached else None,
        "recompiles": rep.get("recompiles"),
        "graphs": len(rep["graphs"]) if rep.get("graphs") else 1,
        "variant_calls": _variant_calls(rep),
        # newer reports say when the runtime ran the model eagerly instead of a compiled variant
        **{k: rep[k] for k in ("eager_calls", "eager_reason") if rep.get(k)},
    }


def run_one(model, entry, ref, options: dict, dynamic, timeout: int) -> dict:
    """One compiled 10-step generation; everything it tells us, or the exception."""
    torch._dynamo.reset()
    record: dict = {"options": options, "dynamic": dynamic}
    kwargs = {} if dynamic is None else {"dynamic": dynamic}
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with time_limit(timeout):
                compiled = torch.compile(model, backend="tokencache",
                                         options=dict(options, num_steps=STEPS, inner="eager"), **kwargs)
                out = zoo.denoise(compiled, entry, STEPS)
            record["rel_error"] = rel_error(out, ref)
        except Exception as e:      # a survey: every failure is a result
            record["error"] = short(e)
            compiled = None
    record["seconds"] = round(time.perf_counter() - t0, 2)
    record["warnings"] = sorted({" ".join(str(w.message).split())[:300] for w in caught
                                 if "tokencache" in str(w.message)})
    if compiled is not None:
        try:
            record.update(summarise_report(tokencache.report(compiled)))
        except Exception as e:
            record["report_error"] = short(e)
    record["status"] = status(record, options)
    return slim(record)


def slim(record: dict) -> dict:
    """Keep the JSON readable: warnings that repeat the fallback reason go, and the rejected-module
    list (the same for every policy) is kept for toca runs only."""
    reason = record.get("fallback_reason") or "\0"
    record["warnings"] = [w for w in record.get("warnings", []) if reason not in w]
    if record["options"]["policy"] != "toca":
        record.pop("rejected_modules", None)
    return record


def _variant_calls(rep: dict) -> dict:
    """Calls per variant over every graph of the model (a recompiled frame runs the later steps)."""
    calls: dict = {}
    for graph in rep.get("graphs") or [rep]:
        for name, v in (graph.get("variants") or {}).items():
            calls[name] = calls.get(name, 0) + (v.get("calls") or 0)
    return calls


def status(run: dict, options: dict) -> str:
    if "error" in run:
        return f"crash: {run['error']}"
    if "report_error" in run:
        return f"crash: report(): {run['report_error']}"
    if run.get("fallback_reason"):
        return f"fallback: {run['fallback_reason']}"
    if options["policy"] == "none":
        return "plain"
    # Cached steps are calls of any variant but the full one. At K = N a token-wise step costs as
    # much as a full one, so the FLOP fraction only tells a no-op apart at ratio < 1.
    cached_steps = sum(c or 0 for name, c in run.get("variant_calls", {}).items() if name != "fresh")
    frac = run.get("flop_fraction")
    if not cached_steps or (options.get("ratio", 0.0) < 1.0 and (frac is None or frac >= 0.99)):
        return "no-op"
    if options["policy"] == "toca" and run.get("token_wise_regions"):
        return "token-wise"
    return "module-level"


def survey_entry(entry, modes, timeout: int, bar) -> dict:
    result: dict = {"entry": entry.name, "class": entry.cls, "notes": entry.notes, "runs": {}}
    try:
        with time_limit(timeout):
            model = entry.build()
            t0 = time.perf_counter()
            ref = zoo.denoise(model, entry, STEPS)
        result["eager_seconds"] = round(time.perf_counter() - t0, 2)
        result["tokens"] = tokens_hint(entry)
    except Exception as e:
        result["error"] = short(e)
        bar.update(len(modes) * len(SETTINGS))
        return result
    for mode in modes:
        for label, options in SETTINGS.items():
            bar.set_postfix_str(f"{entry.name} {label} {mode}")
            result["runs"][f"{label}|{mode}"] = run_one(model, entry, ref, options, DYNAMIC[mode], timeout)
            bar.update(1)
    return result


def tokens_hint(entry) -> str:
    return "x".join(str(d) for d in entry.latent)


# --------------------------------------------------------------------------------------------------
# Report


def classify(result: dict, mode: str = "static") -> str:
    """The class's overall status: token-wise if toca caches token-wise, module-level if only fora
    caches, otherwise the toca run's fallback or crash."""
    if "error" in result:
        return f"crash (uncompiled): {result['error']}"
    toca, fora = result["runs"].get(f"toca|{mode}"), result["runs"].get(f"fora|{mode}")
    if toca and toca["status"] == "token-wise":
        return "token-wise"
    if fora and fora["status"] in ("module-level", "token-wise"):
        return "module-level"
    return (toca or fora or {}).get("status", "not run")


def frac(run) -> str:
    f = run and run.get("flop_fraction")
    return f"{f:.2f}" if isinstance(f, float) else "–"


def exact_cell(run, toca_status: str) -> str:
    if run is None:
        return "–"
    if "error" in run:
        return "crash"
    err = run.get("rel_error")
    if err is None:
        return "–"
    ok = "yes" if err <= EXACT_TOL else "**NO**"
    cached = run["status"] in ("token-wise", "module-level")
    return f"{ok} ({err:.0e})" if cached else f"{ok} ({err:.0e}, uncached)"


def cause(status: str) -> str:
    """A status with module paths and node names taken out, so that classes failing for the same
    reason group together."""
    s = re.sub(r"\[[\w/]+\.py:\d+\]", "", status)                       # [runtime/runtime.py:77]
    s = re.sub(r"\b[A-Za-z_]\w*(?:\.\w+)+", "<module>", s)                # transformer_blocks.0.attn
    s = re.sub(r" at \w+:", " at <node>:", s)                              # unflatten at query_6:
    s = re.sub(r"'\w+_\d+'", "'<node>'", s)                                # node 'to_18' not in graph
    s = re.sub(r"\b\d+\b", "N", s)
    return s.split(" Set TORCHDYNAMO")[0][:200].strip()


def rejected_ops(results: list[dict]) -> list[tuple[tuple[str, str], set]]:
    """(op, why) -> entries, from the per-region reasons of both toca runs: which ops stop regions
    from being token-wise, whether or not the run fell back because of them."""
    found: dict[tuple[str, str], set] = {}
    for r in results:
        for key in ("toca|static", "toca K=N|static"):
            run = r.get("runs", {}).get(key) or {}
            for text in list(run.get("non_token_wise", [])) + [run.get("fallback_reason") or ""]:
                for m in re.finditer(r"not token-local: (\w+) at \w+: ([^;]*?)(?:\.\.\.)?\s*(?:;|$)", text):
                    found.setdefault((m.group(1), m.group(2).strip()), set()).add(r["entry"])
    return sorted(found.items(), key=lambda kv: -len(kv[1]))


def cell(s: str, width: int = 110) -> str:
    s = s.replace("|", "\\|")
    return s if len(s) <= width else s[:width - 1] + "…"


def notes_for(result: dict, modes) -> str:
    notes = []
    runs = result.get("runs", {})
    none = runs.get("none|static")
    if none and none.get("rel_error") is not None and none["rel_error"] > EXACT_TOL:
        notes.append(f"none not exact ({none['rel_error']:.0e})")
    if none and "error" in none:
        notes.append(f"none: {none['status']}")
    toca = runs.get("toca|static") or {}
    if toca.get("non_token_wise"):
        notes.append("not token-wise: " + "; ".join(toca["non_token_wise"])[:160])
    if toca.get("recompiles"):
        notes.append(f"{toca['recompiles']} recompiles")
    if toca.get("graphs", 1) > 1:
        notes.append(f"{toca['graphs']} graphs")
    exact = runs.get("toca K=N|static")
    if exact and exact["status"] != toca.get("status") and not exact["status"].startswith("token-wise"):
        notes.append(f"K=N run (attention=\"tokens\"): {exact['status']}"[:200])
    if "default" in modes:
        for policy in ("none", "toca", "fora"):
            a, b = runs.get(f"{policy}|static"), runs.get(f"{policy}|default")
            if a and b and a["status"] != b["status"]:
                notes.append(f"without dynamic=False, {policy}: {b['status']}")
                break
    if result.get("notes"):
        notes.append(result["notes"])
    return cell("; ".join(notes), 400)


def write_markdown(results: list[dict], modes, path: str, meta: dict) -> None:
    lines = [
        "# tokencache coverage of diffusers transformer classes",
        "",
        f"{meta['date']}, torch {meta['torch']}, diffusers {meta['diffusers']}, tokencache at {meta['commit']}. "
        f"Tiny random-weight configs from `tokencache/models/zoo.py`, {STEPS}-step loop, inner=\"eager\", "
        f"dynamic=False (the notes say where Dynamo's default differs). Generated by `benchmarks/coverage.py`. "
        + _updated(meta),
        "",
        "FLOP fraction: FLOPs of the cached generation over the uncached one (lower saves more). "
        f"Exact at K=N: toca with ratio=1.0, attention=\"tokens\", interval=3 against the uncompiled model "
        f"(relative error <= {EXACT_TOL:g}).",
        "",
        "| class | status toca | status fora | FLOP fraction toca | FLOP fraction fora | exact at K=N | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        runs = r.get("runs", {})
        toca, fora, exact = runs.get("toca|static"), runs.get("fora|static"), runs.get("toca K=N|static")
        name = r["entry"] if r["entry"] == r["class"] else f"{r['entry']} (`{r['class']}`)"
        lines.append("| " + " | ".join([
            name,
            cell(toca["status"] if toca else r.get("error", "–")),
            cell(fora["status"] if fora else "–"),
            frac(toca), frac(fora),
            exact_cell(exact, toca["status"] if toca else ""),
            notes_for(r, modes),
        ]) + " |")
    counts: dict[str, int] = {}
    for r in results:
        key = classify(r).split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    lines += ["", "Overall (dynamic=False): " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + "."]
    for mode in modes:
        # cause -> {entry: [policies]}; for Dynamo's default only what differs from dynamic=False
        groups: dict[str, dict[str, list[str]]] = {}
        for r in results:
            for policy in ("toca", "fora", "none"):
                run = r.get("runs", {}).get(f"{policy}|{mode}")
                static = r.get("runs", {}).get(f"{policy}|static")
                if not run or not run["status"].startswith(("fallback", "crash", "no-op")):
                    continue
                if mode != "static" and static and static["status"] == run["status"]:
                    continue
                groups.setdefault(cause(run["status"]), {}).setdefault(r["entry"], []).append(policy)
        if groups:
            title = ("dynamic=False" if mode == "static"
                     else "Dynamo's default dynamic shapes, where it differs from dynamic=False")
            lines += ["", f"## Why runs did not cache ({title})", ""]
            for why, entries in sorted(groups.items(), key=lambda kv: -len(kv[1])):
                names = ", ".join(f"{e} ({'/'.join(p)})" for e, p in entries.items())
                lines.append(f"- {cell(why, 220)} — {len(entries)}: {names}")
    rejected = rejected_ops(results)
    if rejected:
        lines += ["", "## What the token-axis proof rejects (toca runs, any region)", ""]
        lines += [f"- `{op}` ({why}) — {len(e)}: {', '.join(sorted(e))}" for (op, why), e in rejected]
    if meta.get("unbuildable"):
        lines += ["", "## Not built", ""] + [f"- `{k}`: {v}" for k, v in meta["unbuildable"].items()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


README_START, README_END = "<!-- coverage:start -->", "<!-- coverage:end -->"


def readme_table(results: list[dict], meta: dict) -> str:
    """The compact table the README carries: one row per class, dynamic=False."""
    counts: dict[str, int] = {}
    for r in results:
        key = classify(r).split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    lines = [f"{len(results)} diffusers classes at tiny random-weight configs, {meta['date']}, torch {meta['torch']}, "
             f"diffusers {meta['diffusers']}, tokencache {meta['commit']} (`python benchmarks/coverage.py "
             f"{'--quick ' if meta.get('modes') == ['static'] else ''}--readme README.md`; details, notes and every "
             "reason in `benchmarks/coverage.md`). " + _updated(meta) +
             "Overall: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ".",
             "",
             "| class | toca | fora | FLOP fraction toca / fora | exact at K=N |",
             "|---|---|---|---|---|"]
    for r in results:
        runs = r.get("runs", {})
        toca, fora, exact = runs.get("toca|static"), runs.get("fora|static"), runs.get("toca K=N|static")
        name = f"{r['entry']}" if r["entry"] == r["class"] else f"{r['entry']} ({r['class']})"
        lines.append("| " + " | ".join([
            name, cell(toca["status"] if toca else r.get("error", "–"), 70), cell(fora["status"] if fora else "–", 70),
            f"{frac(toca)} / {frac(fora)}", exact_cell(exact, toca["status"] if toca else "").split(" (")[0],
        ]) + " |")
    return "\n".join(lines)


def _updated(meta: dict) -> str:
    """Which entries a later `--update` re-surveyed, and at what commit."""
    updated = meta.get("updated") or {}
    if not updated:
        return ""
    return "Re-surveyed later (`--update`): " + "; ".join(f"{n} at {c}" for n, c in sorted(updated.items())) + ". "


def write_readme(path: str, results: list[dict], meta: dict) -> None:
    with open(path) as f:
        text = f.read()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{path} has no {README_START} ... {README_END} section to fill")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    with open(path, "w") as f:
        f.write(f"{head}{README_START}\n{readme_table(results, meta)}\n{README_END}{tail}")


def git_commit() -> str:
    try:
        import subprocess

        here = os.path.dirname(os.path.abspath(tokencache.__file__))
        out = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--", "."], capture_output=True, text=True)
        return out.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "") if out.returncode == 0 \
            else "(not a git checkout)"
    except Exception:
        return "unknown"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "coverage.md"))
    p.add_argument("--only", default="", help="comma-separated zoo entry names")
    p.add_argument("--quick", action="store_true", help="dynamic=False only")
    p.add_argument("--timeout", type=int, default=600, help="seconds per run before it counts as a crash")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--label", default=None, help="what tokencache version this is (default: its git commit)")
    p.add_argument("--render", metavar="JSON", help="only rewrite the markdown from a saved JSON")
    p.add_argument("--readme", metavar="PATH", help="also fill the coverage section of this README")
    p.add_argument("--update", metavar="JSON", help="re-survey the --only entries and merge them into this saved "
                   "survey (its other entries stay as they were; meta['updated'] records what changed when)")
    args = p.parse_args(argv)
    if args.render:
        with open(args.render) as f:
            saved = json.load(f)
        write_markdown(saved["results"], saved["meta"]["modes"], args.out, saved["meta"])
        if args.readme:
            write_readme(args.readme, saved["results"], saved["meta"])
        return

    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(zoo.ENTRIES)
    unknown = [n for n in names if n not in zoo.ENTRIES]
    if unknown:
        p.error(f"unknown entries {unknown}; known: {', '.join(zoo.ENTRIES)}")
    modes = ["static"] if args.quick else ["static", "default"]

    import diffusers

    meta = {"date": str(date.today()), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "commit": args.label or git_commit(), "machine": platform.processor() or platform.machine(), "steps": STEPS,
            "modes": modes, "settings": SETTINGS, "unbuildable": zoo.UNBUILDABLE if not args.only else {}}
    json_path = os.path.splitext(args.out)[0] + ".json"
    results = []
    if args.update:
        with open(args.update) as f:
            saved = json.load(f)
        if not args.only:
            p.error("--update re-surveys the entries named by --only")
        meta = {**saved["meta"], "updated": {**saved["meta"].get("updated", {}),
                                             **{n: f"{meta['commit']} ({meta['date']})" for n in names}}}
        modes, json_path = saved["meta"]["modes"], args.update
    with tqdm(total=len(names) * len(modes) * len(SETTINGS), unit="run") as bar:
        for name in names:
            results.append(survey_entry(zoo.ENTRIES[name], modes, args.timeout, bar))
            for r in results[-1:]:
                r["status"] = classify(r)
            if args.update:     # the saved survey, with the re-surveyed entries in their places
                fresh = {r["entry"]: r for r in results}
                results = [fresh.pop(r["entry"], r) for r in saved["results"]] + list(fresh.values())
            # Rewritten after every class: a survey interrupted by a hard crash keeps what it found.
            with open(json_path, "w") as f:
                json.dump({"meta": meta, "results": results}, f, default=str)
            write_markdown(results, modes, args.out, meta)
    for r in results:
        print(f"{r['entry']:24s} {r['status']}")
    if args.readme:
        write_readme(args.readme, results, meta)
    print(f"wrote {args.out} and {json_path}" + (f"; filled the coverage section of {args.readme}" if args.readme else ""))


if __name__ == "__main__":
    main()
