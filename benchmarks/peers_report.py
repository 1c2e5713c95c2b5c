"""How a peer-benchmark run is reported (bench_peers.py): which settings are on the speed/PSNR
front, the markdown table for BENCHMARKS.md and the speed-vs-fidelity plot."""
from __future__ import annotations

import math


# compiled graphs differ from each other by float rounding: a setting that skips nothing still differs
# from the uncached output by about 1e-7 (bench_compiled_peers)
ROUNDING_REL_L2 = 1e-5
ROUNDING_PSNR_DB = 100.0


def mark_pareto(rows):
    """For each row: which row of another family beats it on both measured speed-up and PSNR."""
    ok = [r for r in rows if "error" not in r]
    for r in ok:
        if r["method"] == "uncached":
            continue
        better = [o for o in ok if o is not r and o["measured_speedup"] >= r["measured_speedup"]
                  and o["psnr_db"] >= r["psnr_db"]
                  and (o["measured_speedup"] > r["measured_speedup"] or o["psnr_db"] > r["psnr_db"])]
        r["dominated_by"] = [o["method"] for o in better]
        r["pareto"] = not better
        if r["family"] != "tokencache":
            r["beats_tokencache_somewhere"] = not any(o["family"] == "tokencache" for o in better) and \
                r["measured_speedup"] > 1.0 and not r.get("note")


def fmt(x, spec):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return format(x, spec)


def table(rows, embedded, meta, extra=()):
    """`extra`: (header, row -> cell text) columns put after the method (bench_compiled_peers' compile
    columns); rows with an "error" get a dash in them."""
    lines = []
    ex_head = "".join(f" {h} |" for h, _ in extra)
    ex_rule = "---|" * len(extra)
    if embedded:
        lines.append(f"| method |{ex_head} FLOP speed-up | measured speed-up | efficiency | PSNR dB | SSIM "
                     "| FD_clf vs uncached | class acc | speed/PSNR front |")
        lines.append(f"|---|{ex_rule}---|---|---|---|---|---|---|---|")
    else:
        lines.append(f"| method |{ex_head} FLOP speed-up | measured speed-up | efficiency | generation (median s) "
                     "| note |")
        lines.append(f"|---|{ex_rule}---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            n = (9 if embedded else 6) + len(extra)
            lines.append(f"| {r['method']} |" + " – |" * (n - 2) + f" cannot run on this model: {r['error']} |")
            continue
        method = r["method"] + " |" + "".join(f" {fn(r)} |" for _, fn in extra)
        if embedded:
            if r["method"] == "uncached":
                front = "reference"
            elif r.get("note"):
                front = r["note"]
            elif r.get("beats_tokencache_somewhere"):
                front = "**peer not dominated by any tokencache setting**" + \
                        ("" if r["pareto"] else f" (dominated by {', '.join(r['dominated_by'][:2])})")
            elif r["pareto"]:
                front = "on the front"
            else:
                front = "dominated by " + ", ".join(r["dominated_by"][:2]) + \
                        (f" +{len(r['dominated_by']) - 2}" if len(r["dominated_by"]) > 2 else "")
            lines.append(f"| {method} {fmt(r['flop_speedup'], '.2f')}x | {fmt(r['measured_speedup'], '.2f')}x | "
                         f"{fmt(r['efficiency'], '.2f')} | {fmt(r['psnr_db'], '.2f')} | {fmt(r['ssim'], '.4f')} | "
                         f"{fmt(r['fd_clf_vs_uncached'], '.2f')} | {fmt(r['class_accuracy'], '.3f')} | {front} |")
        else:
            note = f"output differs from uncached: rel. L2 {r['rel_l2_random_weights']:.3g}" \
                if r["method"] != "uncached" else "reference"
            if r["method"] != "uncached" and r["rel_l2_random_weights"] == 0:
                note = "no effect: output identical to uncached"
            elif r["method"] != "uncached" and r["rel_l2_random_weights"] < ROUNDING_REL_L2:
                note = f"no effect: output within rounding of uncached (rel. L2 {r['rel_l2_random_weights']:.1g})"
            lines.append(f"| {method} {fmt(r['flop_speedup'], '.2f')}x | {fmt(r['measured_speedup'], '.2f')}x | "
                         f"{fmt(r['efficiency'], '.2f')} | {fmt(r['median_generation_s'], '.2f')} | {note} |")
    head = (f"{meta['model']}; {meta['args']['steps']} steps, CFG {meta['args']['guidance']}, "
            f"{meta.get('compiled_as', 'inner ' + str(meta['args'].get('inner')))}; timing: {meta['time_samples']} image(s) per generation, "
            f"{meta['args']['rounds']} interleaved rounds; {meta['machine']}; {meta['date_utc']} UTC")
    return head + "\n\n" + "\n".join(lines)


def plot(rows, path, meta):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colours = {"tokencache": "tab:blue", "diffusers": "tab:orange", "cache-dit": "tab:green", "uncached": "black"}
    fig, ax = plt.subplots(figsize=(8, 5))
    ok = [r for r in rows if "error" not in r]
    # identical, or within float rounding of uncached (compiled graphs): plotted on the top line
    finite = [r["psnr_db"] for r in ok if r["psnr_db"] <= ROUNDING_PSNR_DB]
    top = (max(finite) if finite else 40) + 5
    for fam, colour in colours.items():
        pts = sorted([(r["measured_speedup"], top if r["psnr_db"] > ROUNDING_PSNR_DB else r["psnr_db"], r["method"])
                      for r in ok if r["family"] == fam])
        if not pts:
            continue
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=colour, label=fam, zorder=3)
        front, best = [], -1e9            # the family's own front: highest PSNR at each speed and above
        for x, y, _ in sorted(pts, key=lambda p: -p[0]):
            if y > best:
                front.append((x, y))
                best = y
        if fam != "uncached" and len(front) > 1:
            ax.plot([p[0] for p in front], [p[1] for p in front], color=colour, alpha=0.5, zorder=2)
        for x, y, name in pts:
            ax.annotate(name.replace("tokencache ", "").replace("diffusers ", "").replace("cache-dit ", ""),
                        (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.axhline(top, color="gray", lw=0.5, ls=":")
    baseline = meta.get("baseline", meta["args"].get("inner"))
    ax.set_xlabel(f"measured speed-up vs uncached (x; {baseline}, {meta['time_samples']} images/generation)")
    ax.set_ylabel(f"PSNR vs uncached (dB; identical or within rounding: {top:.0f})")
    ax.set_title(f"{meta.get('model_short', 'embedded DiT')}, {meta['args']['steps']} steps: speed vs fidelity ({meta['date_utc'][:10]})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
