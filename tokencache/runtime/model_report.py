"""report() for a whole model: every graph Dynamo handed over for it, added up.

One model can reach tokencache as several graphs: pieces split by graph breaks, a block's own
frame run once per block instance, recompiles for other shapes, static specialisations of a
symbolic graph. Each (graph, model instance) pair has its own runtime report; this module
combines them:

 - `graphs`: one entry per graph, its FLOPs multiplied by the module instances that ran it
   (`instances`: a block frame serves every block), with Dynamo's compile id and frame;
 - FLOPs per generation: the sum over the graphs that ran in the model's latest generation (a
   graph of an earlier input shape is listed, not added);
 - `recompiles`: graphs that are another compile of a frame already listed (not graph breaks);
 - `graph_breaks`: where and why Dynamo split the model, in Dynamo's words;
 - `uncached`: what runs uncached, largest FLOP share first: graphs that fell back or hold no
   blocks, and regions that are not cached or not token-wise, each with its reason;
 - `low_savings`: when caching saves less than LOW_SAVINGS of a generation's FLOPs, why (the
   top `uncached` entries) — also warned once per model, at report() or when a generation ends.
"""
from __future__ import annotations

import threading
import warnings
import weakref
from collections import Counter

import torch
import torch.fx as fx

LOW_SAVINGS = 0.2
_WARNED: "weakref.WeakSet" = weakref.WeakSet()
_LOCK = threading.Lock()
_INTERNAL = ("last_call", "_runtime")


def outside_flops(runtime) -> Counter:
    """FLOPs of one uncached call of a graph that lie outside its cached regions, by module
    (up to three path components), counted on fake tensors like CacheRuntime.variant_flops."""
    from ..compat import fake_tensor_mode, module_path
    from .flops import count_graph_flops

    regions = [r["region"] for r in runtime.report_base.get("regions") or []]
    if runtime.report_base.get("fallback_reason") is not None or runtime.report_base.get("policy") == "none":
        regions = []
    name = runtime.schedule[0]
    found: Counter = Counter()

    def note(node, flops):
        path = module_path(node)
        if not any(path == r or path.startswith(r + ".") for r in regions):
            found[".".join(path.split(".")[:3]) or "(top level)"] += flops

    with torch.no_grad(), fake_tensor_mode():
        count_graph_flops(runtime.variants[name], runtime.assemble(name, runtime.fake_examples(), {}, 0, [0]),
                          per_node=note)
    return found


def _graph_reports(found) -> list[dict]:
    groups: dict[int, tuple[object, list]] = {}
    for runtime, entry in found:
        groups.setdefault(id(runtime), (runtime, []))[1].append(entry)
    reports = []
    for runtime, entries in groups.values():
        latest = max(entries, key=lambda e: e.last_call)
        rep = runtime.report(latest)
        n = len(entries)
        for name, variant in rep["variants"].items():
            variant["calls"] = sum(e.calls[name] for e in entries)
        rep["instances"] = n
        rep["flops_per_generation"] *= n
        rep["flops_uncached_generation"] *= n
        rep["last_call"] = latest.last_call
        rep["_runtime"] = runtime
        rep.setdefault("capture", {})
        reports.append(rep)
    return reports


def _uncached(graphs: list[dict], total: int) -> list[dict]:
    found = []
    for g in graphs:
        capture = g.get("capture") or {}
        where = {"graph": capture.get("compile_id"), "frame": capture.get("frame")}
        share = g["flops_uncached_generation"] / total if total else 0.0
        if g.get("fallback_reason") is not None or g.get("policy") == "none":
            reason = g.get("fallback_reason") or "policy='none'"
            if (capture.get("frame") or "").startswith("torch_dynamo_resume_in") and not g.get("regions"):
                reason += " (the rest of a frame after a graph break: its block is split across graphs, see graph_breaks)"
            found.append({**where, "flop_share": round(share, 4), "reason": reason})
            continue
        for r in g.get("regions") or []:
            if not r.get("token_wise") and r.get("reason"):
                found.append({**where, "region": r["region"], "flop_share": None,
                              "reason": f"not token-wise (reused whole in cached steps): {r['reason']}"})
        for m in g.get("rejected_modules") or []:
            if "is not a (batch, tokens, channels) tensor" in m["reason"]:
                continue    # per-sample conditioning (adaLN modulation): no tokens to cache
            found.append({**where, "region": m["module"], "flop_share": None, "reason": f"not cached: {m['reason']}"})
    return sorted(found, key=lambda u: -(u["flop_share"] or 0.0))


def _outside(active: list[dict], total: int) -> dict | None:
    """Where a generation's FLOPs go outside the cached regions: share and top modules."""
    modules: Counter = Counter()
    for g in active:
        try:
            counts = outside_flops(g["_runtime"])
        except Exception:  # noqa: BLE001 - an explanation that cannot be computed is left out
            continue
        for path, flops in counts.items():
            modules[path] += flops * len(g["schedule"]) * g["instances"]
    if not total or not modules:
        return None
    return {"flop_share": round(sum(modules.values()) / total, 4),
            "modules": [{"module": m, "flop_share": round(f / total, 4)} for m, f in modules.most_common(5)]}


def _low_savings(fraction: float | None, uncached: list[dict], config: dict, outside: dict | None) -> dict | None:
    if fraction is None or fraction <= 1 - LOW_SAVINGS or config.get("policy") == "none":
        return None
    lines = []
    if outside is not None and outside["flop_share"] > LOW_SAVINGS:
        top = ", ".join(f"{m['module']} {m['flop_share']:.0%}" for m in outside["modules"][:3])
        lines.append(f"{outside['flop_share']:.0%} of the FLOPs run outside any cached region (mostly {top})")
    graphs = [u for u in uncached if not u.get("region") and (u.get("flop_share") or 0) >= 0.01][:3]
    regions = [u for u in uncached if u.get("region")][:2]
    for u in graphs + regions:
        what = f"region {u['region']}" if u.get("region") else f"graph {u['graph']} ({u['frame']})"
        share = f", {u['flop_share']:.0%} of the FLOPs" if u.get("flop_share") else ""
        lines.append(f"{what}{share}: {u['reason']}")
    if not lines or not graphs and not (outside and outside["flop_share"] > LOW_SAVINGS):
        lines.append(f"the cached steps themselves compute much (ratio={config.get('ratio')}, interval="
                     f"{config.get('interval')}, attention={config.get('attention')!r}), or the cached regions are a "
                     "small part of the model's FLOPs (convolutions, embeddings)")
    return {"flop_fraction": round(fraction, 4),
            "reason": f"caching saves {1 - fraction:.1%} of a generation's FLOPs (less than {LOW_SAVINGS:.0%}): "
                      + "; ".join(lines)}


def combine(found) -> dict:
    """The report of a model from its (runtime, entry) pairs (non-empty)."""
    graphs = _graph_reports(found)
    start = _latest_start(found)
    active = [g for g in graphs if start is None or g["last_call"] >= start] or graphs
    flops = sum(g["flops_per_generation"] for g in active)
    uncached_total = sum(g["flops_uncached_generation"] for g in active)
    fraction = flops / uncached_total if uncached_total else None
    frames = {(g["capture"].get("frame_id"), g["capture"].get("frame")) for g in graphs
              if g["capture"].get("frame_id") is not None}
    recompiles = len([g for g in graphs if g["capture"].get("frame_id") is not None]) - len(frames)
    breaks, seen = [], set()
    for g in graphs:
        brk = g["capture"].get("graph_break")
        if brk and (brk["reason"], brk["at"]) not in seen:
            seen.add((brk["reason"], brk["at"]))
            breaks.append({"graph": g["capture"].get("compile_id"), "frame": g["capture"].get("frame"), **brk})
    uncached = _uncached(active, uncached_total)
    main = max(graphs, key=lambda g: (len(g["regions"]), g["flops_uncached_generation"]))
    config = main.get("config") or {}
    low = None
    if fraction is not None and fraction > 1 - LOW_SAVINGS and config.get("policy") != "none":
        outside = _outside(active, uncached_total)
        low = _low_savings(fraction, uncached, config, outside)
        if low is not None and outside is not None:
            low["outside_regions"] = outside
    for g in graphs:
        for key in _INTERNAL:
            g.pop(key, None)
    return {**main, "flops_per_generation": flops, "flops_uncached_generation": uncached_total,
            "flop_fraction": fraction, "recompiles": recompiles, "graphs": graphs if len(graphs) > 1 else None,
            "graph_breaks": breaks, "uncached": uncached, "low_savings": low}


def _latest_start(found) -> int | None:
    """Call sequence at which the model's latest generation started, from its timestep graphs."""
    from . import steplink

    starts = []
    for _, entry in found:
        for session in list(getattr(entry, "sessions", ())):
            model = steplink.model_of_known(session)
            if model is not None:
                start = steplink.generation_start(model)
                if start is not None:
                    starts.append(start)
    return max(starts) if starts else None


def _warned_already(report: dict) -> bool:
    """Whether a graph of the model already warned that it runs uncached (the backend warns for
    every graph that falls back, except pieces of a split model that hold no block)."""
    for g in report.get("graphs") or [report]:
        piece = (g.get("capture") or {}).get("entry") is False and not g.get("regions")
        if g.get("fallback_reason") is not None and not piece:
            return True
    return False


def warn_low_savings(key, report: dict) -> None:
    """Warn once per `key` (the model) when the report says caching saves little, unless a
    fallback warning already said why."""
    low = report.get("low_savings")
    if low is None or _warned_already(report):
        return
    with _LOCK:
        try:
            if key in _WARNED:
                return
            _WARNED.add(key)
        except TypeError:
            pass
    warnings.warn(f"tokencache: {low['reason']}. report()['uncached'] lists every uncached graph and region.",
                  stacklevel=3)


_CHECKED: "weakref.WeakSet" = weakref.WeakSet()


def check_generation(model, config) -> None:
    """At the end of a model's first generation (once per model): warn if caching saved little.
    Never raises: a failed check must not cost the model call."""
    from .registry import sessions_for

    with _LOCK:
        if model in _CHECKED or model in _WARNED:
            return
        _CHECKED.add(model)
    try:
        found = [(r, e) for r, e in sessions_for(model) if r.config == config]
        if found:
            warn_low_savings(model, combine(found))
    except Exception:      # noqa: BLE001 - a report that cannot be built is report()'s to raise
        pass
