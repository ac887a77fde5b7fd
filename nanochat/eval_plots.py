"""
The figure of an evaluation sweep over r (scripts/chat_eval.py, scripts/base_eval.py): one
panel per metric, so no line hides another; in each, metric vs r for the fixed-r rows (solid,
circles) and the adaptive-exit rows (dashed, hollow squares a little to the right, each
labelled with its mean depth); the metric's chance level as a dotted line; a y range that always includes 0 and
spans at least MIN_SPAN, so a difference of 0.003 never fills the panel as a cliff.
"""

import math
import textwrap

MIN_SPAN = 0.1  # the least y range of a panel (accuracy-like metrics in [0, 1])
X_OFFSET = 1.06  # adaptive points drawn at r x this (log axis): beside the fixed point of the same r


def y_range(values, chance=None, min_span=MIN_SPAN):
    """(lo, hi) for the y axis: 0, the chance level and every finite value inside, at least
    min_span wide, with a 5 % margin."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    points = finite + [0.0] + ([chance] if chance is not None else [])
    lo, hi = min(points), max(points)
    if hi - lo < min_span:
        hi = lo + min_span
    pad = 0.05 * (hi - lo)
    return lo - pad, hi + pad


def plot_sweep(path, rows, panels, title, depth_key=None):
    """Write the figure to path. rows: dicts with "r", "mode" ("fixed" | "adaptive") and the
    metrics; panels: [(metric key, panel title, chance level or None)]; depth_key(metric) -> the
    row key of that metric's mean depth (adaptive points are labelled with it), or None."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ncols = min(len(panels), 4)
    nrows = math.ceil(len(panels) / ncols)
    width = max(3.6 * ncols, 6.0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, 3.0 * nrows + 0.7), squeeze=False)
    recurs = sorted({row["r"] for row in rows})
    # adaptive points sit a little to the right, hollow: equal values never hide a line
    styles = {"fixed": (1.0, dict(ls="-", marker="o", ms=5)), "adaptive": (X_OFFSET, dict(ls="--", marker="s", ms=6, mfc="none"))}
    for ax, (key, label, chance) in zip(axes.flat, panels):
        values = []
        for mode, (offset, style) in styles.items():
            pts = [(row["r"] * offset, row[key], row.get(depth_key(key)) if depth_key else None)
                   for row in rows if row.get("mode", "fixed") == mode and row.get(key) is not None]
            if not pts:
                continue
            xs, ys, depths = zip(*pts)
            values += ys
            ax.plot(xs, ys, label="fixed r" if mode == "fixed" else "adaptive (cap r)", lw=1.5, **style)
            if mode == "adaptive":
                for x, y, d in zip(xs, ys, depths):
                    if d is not None and math.isfinite(d):
                        ax.annotate(f"d={d:.1f}", (x, y), textcoords="offset points", xytext=(5, 3), fontsize=7,
                                    ha="left", va="bottom", color=ax.lines[-1].get_color())
        if chance is not None:
            ax.axhline(chance, color="gray", ls=":", lw=1, label=f"chance {chance:g}")
        ax.set_ylim(*y_range(values, chance))
        ax.set_title(label, fontsize=10)
        ax.set_xscale("log", base=2)
        ax.set_xticks(recurs, [str(r) for r in recurs])
        ax.set_xlim(recurs[0] / 1.3, recurs[-1] * 1.5)  # room for the depth labels on the right
        ax.set_xlabel("r (loop iterations)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if any(r.get("mode") == "adaptive" for r in rows):
        title += "; d = mean depth of an adaptive point"
    fig.suptitle(textwrap.fill(title, width=int(width * 12)), fontsize=10)  # ~12 characters an inch at 10 pt
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
