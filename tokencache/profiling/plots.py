"""Pictures of a profile: the step timeline coloured by variant, and speed vs fidelity."""
from __future__ import annotations

import math


def plot_profile(result: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = result["settings"]
    fig, (timeline, pareto) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    names = list(settings)
    colours = {}
    palette = plt.get_cmap("tab10")
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        for point in settings[name]["timeline"]:
            colour = colours.setdefault(point["variant"], palette(len(colours) % 10))
            timeline.bar(point["step"] + k * width, point["median_s"] * 1e3, width=width, color=colour)
    timeline.set_xlabel("step (bars left to right: " + ", ".join(names) + ")")
    timeline.set_ylabel("median latency (ms)")
    timeline.set_title(f"{result['model']}: per-step latency by variant")
    timeline.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()], labels=list(colours),
                    fontsize=8)
    for name in names:
        r = settings[name]
        psnr = r["fidelity"]["psnr_db"]
        shown = 60.0 if math.isinf(psnr) else psnr
        pareto.scatter(r["measured_speedup"], shown, s=40)
        pareto.annotate(name, (r["measured_speedup"], shown), fontsize=7, xytext=(3, 3), textcoords="offset points")
    pareto.set_xlabel("measured speed-up (x)")
    pareto.set_ylabel("PSNR vs uncached (dB; identical drawn at 60)")
    pareto.set_title("speed vs fidelity")
    pareto.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
