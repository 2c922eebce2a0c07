"""PNG plots of identification results: CMC and DET curves, one line per probe set.

Figures are drawn on matplotlib's Agg canvas directly, without pyplot, so drawing
neither needs a display nor changes the process-wide matplotlib backend.
matplotlib is imported on the first plot, so importing this module stays cheap.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

FIGURE_SIZE = (6.4, 4.8)  # inches
DPI = 120


def plot_cmc(curves: Mapping[str, Sequence[float]], path: Path, *, title: str) -> Path:
    """Draw cumulative match characteristic curves and save them as a PNG.

    Args:
        curves: probe set name to rank-1, rank-2, ... identification rates in [0, 1].
        path: the PNG file to write; its folder is created.
        title: figure title, for example the model id.

    Returns:
        ``path``.
    """
    from matplotlib.ticker import MaxNLocator

    figure, axes = _new_figure()
    longest = 1
    for name, rates in curves.items():
        ranks = np.arange(1, len(rates) + 1)
        axes.plot(ranks, rates, marker="o", markersize=3, label=name)
        longest = max(longest, len(rates))
    axes.set_xlim(1, longest)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylim(0.0, 1.0)
    axes.set_xlabel("rank")
    axes.set_ylabel("identification rate")
    axes.set_title(f"CMC: {title}", fontsize="medium")
    return _save(figure, axes, path, legend_location="lower right")


def plot_det(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: Path,
    *,
    title: str,
    target_fpirs: Sequence[float] = (),
) -> Path:
    """Draw open-set DET curves, FNIR against FPIR on a log x axis, and save them as a PNG.

    Points with FPIR 0 cannot sit on a log axis and are left out. A dotted vertical
    line marks each target FPIR.

    Args:
        curves: probe set name to ``(fpir, fnir)`` arrays of equal length.
        path: the PNG file to write; its folder is created.
        title: figure title, for example the model id.
        target_fpirs: FPIR values to mark.

    Returns:
        ``path``.
    """
    figure, axes = _new_figure()
    for name, (fpir, fnir) in curves.items():
        fpir = np.asarray(fpir, dtype=np.float64)
        fnir = np.asarray(fnir, dtype=np.float64)
        positive = fpir > 0
        axes.step(fpir[positive], fnir[positive], where="post", label=name)
    for target in target_fpirs:
        axes.axvline(target, color="gray", linestyle=":", linewidth=1)
    axes.set_xscale("log")
    axes.set_ylim(0.0, 1.0)
    axes.set_xlabel("FPIR (false positive identification rate)")
    axes.set_ylabel("FNIR (false negative identification rate)")
    axes.set_title(f"DET: {title}", fontsize="medium")
    return _save(figure, axes, path, legend_location="upper right")


def _new_figure() -> tuple[Figure, Axes]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGURE_SIZE, dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.grid(True, which="both", alpha=0.3)
    return figure, axes


def _save(figure: Figure, axes: Axes, path: Path, *, legend_location: str) -> Path:
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc=legend_location)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    logger.debug("wrote %s", path)
    return path
