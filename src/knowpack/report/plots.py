"""Report figures with matplotlib (Agg, no display): each function returns a `Figure` (PNG bytes + caption).

In:  plain numbers and labels.  Out: PNG images sized for a page column, labelled axes with units.
Figures are built with `matplotlib.figure.Figure` (no pyplot global state), so nothing leaks between calls.
"""

from __future__ import annotations

import io
import warnings
from typing import Sequence

import numpy as np

from knowpack.report.page import Figure

__all__ = ["bars", "grouped_bars", "heatmap", "lines", "scatter_fit", "stacked_shares"]

SIZE = (7.0, 3.8)
LEGEND_WIDTH, LEGEND_LINES = 44, 3  # a legend entry's line length and most lines (longer names end in "…")


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure as MplFigure

    figure = MplFigure(figsize=SIZE, dpi=100, layout="constrained")
    return figure, figure.subplots()


def _axes_style(axes, logx: bool = False, xs: Sequence[float] = ()) -> None:
    """Plain tick labels (no offset like "1e-5 + 10.79"); on a log x axis, ticks at the tested values."""
    if logx:
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        axes.set_xscale("log")
        ticks = sorted(set(float(x) for x in xs))
        if 0 < len(ticks) <= 8:
            axes.set_xticks(ticks)
        axes.xaxis.set_major_formatter(ScalarFormatter())
        axes.xaxis.set_minor_formatter(NullFormatter())
    else:
        axes.ticklabel_format(axis="x", useOffset=False)
    axes.ticklabel_format(axis="y", useOffset=False)


def _text(label: object) -> str:
    return str(label) if str(label).strip() else "(empty)"


def _tick(label: object) -> str:
    """A category tick label: one line per "field=value" part, so long configuration names stay readable."""
    return _text(label).replace(", ", "\n")


def _legend(axes) -> None:
    """The legend with each entry wrapped and cut to a few lines: an entry as long as a whole configuration
    would otherwise leave constrained layout no room for the plot."""
    import textwrap

    handles, labels = axes.get_legend_handles_labels()
    wrapped = [textwrap.fill(label, LEGEND_WIDTH, max_lines=LEGEND_LINES, placeholder=" …") for label in labels]
    axes.legend(handles, wrapped, fontsize=8)


def _png(figure, caption: str) -> Figure:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # A multilingual model's answers (Gemma's vocabulary: Hangul, CJK, Devanagari, …) can hold glyphs the
        # bundled font lacks; the figure still renders (a box per glyph) and the tables beside it hold the text.
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
        figure.savefig(buffer, format="png")
    return Figure(buffer.getvalue(), caption)


def lines(series: dict[str, tuple[Sequence[float], Sequence[float], Sequence[float] | None]], xlabel: str,
          ylabel: str, caption: str, logx: bool = False, ylim: tuple[float, float] | None = None,
          curves: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> Figure:
    """One line per series (x, y, optional error bars); ``curves`` adds fitted lines (dashed)."""
    figure, axes = _figure()
    colors = {}
    for name, (x, y, err) in series.items():
        colors[name] = axes.errorbar(x, y, yerr=err, marker="o", capsize=3, label=name).lines[0].get_color()
    for name, (x, y) in (curves or {}).items():  # "fit: <series>" is drawn in its series' colour
        axes.plot(x, y, linestyle="--", label=name, color=colors.get(name.removeprefix("fit: ")))
    xs = [x for values, _, _ in series.values() for x in values]
    _axes_style(axes, logx, xs)
    if not logx and xs and all(float(x).is_integer() for x in xs):  # epochs, rounds: no "1.2" ticks
        from matplotlib.ticker import MaxNLocator

        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ylim:
        axes.set_ylim(*ylim)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    if len(series) + len(curves or {}) > 1:
        _legend(axes)
    return _png(figure, caption)


def bars(labels: Sequence[str], values: Sequence[float], ylabel: str, caption: str,
         errors: Sequence[float] | None = None, horizontal: bool = False) -> Figure:
    figure, axes = _figure()
    positions = np.arange(len(labels))
    labels = [_text(label) for label in labels]
    if horizontal:
        axes.barh(positions, values, xerr=errors, capsize=3, color="#4c72b0")
        axes.set_yticks(positions, labels, fontsize=8)
        axes.invert_yaxis()
        axes.set_xlabel(ylabel)
    else:
        axes.bar(positions, values, yerr=errors, capsize=3, color="#4c72b0")
        axes.set_xticks(positions, labels, rotation=20 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center",
                        fontsize=8)
        axes.set_ylabel(ylabel)
        axes.axhline(0, color="black", linewidth=0.8)
    axes.grid(alpha=0.3, axis="x" if horizontal else "y")
    return _png(figure, caption)


def grouped_bars(groups: Sequence[str], series: dict[str, Sequence[float]], ylabel: str, caption: str,
                 errors: dict[str, Sequence[float]] | None = None) -> Figure:
    """Bars side by side per group (e.g. base vs after per benchmark)."""
    figure, axes = _figure()
    positions = np.arange(len(groups))
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        axes.bar(positions + (i - (len(series) - 1) / 2) * width, values, width, label=name,
                 yerr=(errors or {}).get(name), capsize=3)
    axes.set_xticks(positions, [_tick(g) for g in groups], fontsize=7 if len(groups) > 4 else 8)
    axes.set_ylabel(ylabel)
    axes.axhline(0, color="black", linewidth=0.8)
    axes.grid(alpha=0.3, axis="y")
    _legend(axes)
    return _png(figure, caption)


def stacked_shares(groups: Sequence[str], shares: dict[str, Sequence[float]], ylabel: str, caption: str) -> Figure:
    figure, axes = _figure()
    bottom = np.zeros(len(groups))
    positions = np.arange(len(groups))
    for name, values in shares.items():
        axes.bar(positions, values, bottom=bottom, label=name)
        bottom += np.asarray(values, float)
    axes.set_ylabel(ylabel)
    axes.set_ylim(0, 1)
    axes.set_xticks(positions, [_tick(g) for g in groups], fontsize=7 if len(groups) > 4 else 8)
    _legend(axes)
    return _png(figure, caption)


def heatmap(matrix: np.ndarray, rows: Sequence[str], columns: Sequence[str], xlabel: str, ylabel: str,
            caption: str, value_label: str = "facts", value_range: tuple[float, float] | None = None) -> Figure:
    """Values in a colour scale (counts by default), each cell annotated with its number; NaN cells stay blank."""
    figure, axes = _figure()
    vmin, vmax = value_range or (None, None)
    image = axes.imshow(matrix, cmap="Blues", vmin=vmin, vmax=vmax)
    axes.set_xticks(range(len(columns)), columns, fontsize=8)
    axes.set_yticks(range(len(rows)), rows, fontsize=8)
    top = vmax if vmax is not None else (np.nanmax(matrix) if np.isfinite(matrix).any() else 0)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            value = matrix[i, j]
            if np.isnan(value):
                continue
            text = f"{value:g}" if float(value).is_integer() else f"{value:.2f}" if value_range else f"{value:.1f}"
            axes.text(j, i, text, ha="center", va="center", color="white" if top and value > top / 2 else "black")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    figure.colorbar(image, ax=axes, label=value_label)
    return _png(figure, caption)


def scatter_fit(x: Sequence[float], y: Sequence[float], xlabel: str, ylabel: str, caption: str,
                curve: tuple[np.ndarray, np.ndarray] | None = None, logx: bool = False,
                highlight: Sequence[int] = (), labels: Sequence[str] | None = None) -> Figure:
    """Data points, an optional fitted curve, optional highlighted points (e.g. a Pareto front) with labels."""
    figure, axes = _figure()
    axes.scatter(x, y, color="#4c72b0", label="runs" if labels is None else "configurations", zorder=2)
    if curve is not None:
        axes.plot(*curve, color="#c44e52", linestyle="--", label="fit", zorder=3)
    if highlight:
        order = sorted(highlight, key=lambda i: x[i])
        axes.plot([x[i] for i in order], [y[i] for i in order], color="#55a868", marker="o", label="Pareto front",
                  zorder=4)
        for rank, i in enumerate(sorted(highlight, key=lambda i: -y[i]), start=1):
            if labels is not None:  # numbered like the front's table; full labels would overlap
                axes.annotate(f"#{rank}", (x[i], y[i]), fontsize=8, xytext=(4, 4), textcoords="offset points")
    _axes_style(axes, logx, x if logx else ())
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    _legend(axes)
    return _png(figure, caption)
