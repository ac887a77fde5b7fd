"""The eval sweep figure: y ranges that keep noise small, every line drawn."""

import matplotlib

matplotlib.use("Agg")

from nanochat.eval_plots import MIN_SPAN, X_OFFSET, plot_sweep, y_range  # noqa: E402


def test_y_range_includes_zero_chance_and_a_minimum_span():
    lo, hi = y_range([0.2101, 0.2131])  # CORE differing by 0.003: a flat line, not a cliff
    assert lo < 0 < 0.2131 < hi and (0.2131 - 0.2101) / (hi - lo) < 0.02
    lo, hi = y_range([-0.012, -0.009], chance=0.0)
    assert hi - lo >= MIN_SPAN and lo < -0.012
    lo, hi = y_range([0.26, 0.27], chance=0.25)
    assert lo < 0 and hi > 0.27
    assert y_range([float("nan"), None], chance=0.25)[1] > 0.25  # nothing finite: 0 and chance still frame it


def test_plot_draws_every_line_beside_each_other(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    drawn = []
    monkeypatch.setattr(plt, "close", lambda fig: drawn.append(fig))  # keep the figure to inspect it
    rows = [{"r": r, "mode": m, "a": 0.3, "b": 0.1, "mean depth": r - 0.5 * (m == "adaptive")}
            for r in (2, 4) for m in ("fixed", "adaptive")]
    plot_sweep(str(tmp_path / "x.png"), rows, [("a", "A", 0.25), ("b", "B", 0.0)], "t", depth_key=lambda k: "mean depth")
    assert (tmp_path / "x.png").stat().st_size > 0
    axes = [ax for ax in drawn[0].axes if ax.get_visible()]
    assert len(axes) == 2  # one panel per metric
    for ax in axes:
        fixed, adaptive = ax.lines[0], ax.lines[1]
        assert list(fixed.get_xdata()) == [2, 4] and list(adaptive.get_xdata()) == [2 * X_OFFSET, 4 * X_OFFSET]
        assert fixed.get_linestyle() != adaptive.get_linestyle() and fixed.get_marker() != adaptive.get_marker()
        assert [t.get_text() for t in ax.texts] == ["d=1.5", "d=3.5"]  # adaptive points carry their mean depth
        lo, hi = ax.get_ylim()
        assert lo < 0 and hi - lo >= MIN_SPAN
