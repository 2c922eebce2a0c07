"""PNG plot of a training run: loss and validation rank-1 per epoch."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from core.siamese.training import TrainingResult

logger = logging.getLogger(__name__)

FIGURE_SIZE = (10.0, 4.0)  # inches
DPI = 120


def plot_training_curves(results: Sequence[TrainingResult], path: Path) -> Path:
    """Draw training and validation loss (left) and validation masked rank-1 (right) for each run.

    Uses matplotlib's Agg canvas directly, so no display is needed. Returns ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGURE_SIZE)
    FigureCanvasAgg(figure)
    loss_axes, rank_axes = figure.subplots(1, 2)
    for index, result in enumerate(results):
        color = f"C{index}"  # one colour per loss in both panels
        epochs = [record.epoch for record in result.history]
        trained = [record for record in result.history if record.train_loss is not None]
        name = result.config.loss
        loss_axes.plot(
            [record.epoch for record in trained],
            [record.train_loss for record in trained],
            color=color,
            label=f"{name} training",
        )
        loss_axes.plot(
            epochs,
            [record.validation.loss for record in result.history],
            "--",
            color=color,
            label=f"{name} validation",
        )
        rank_axes.plot(
            epochs,
            [record.validation.masked_rank1 for record in result.history],
            marker="o",
            color=color,
            label=f"{name} masked (kept epoch {result.best_epoch})",
        )
        rank_axes.plot(
            epochs,
            [record.validation.unmasked_rank1 for record in result.history],
            "--",
            marker="s",
            color=color,
            label=f"{name} unmasked",
        )
        rank_axes.axvline(result.best_epoch, linestyle=":", color=color)
    loss_axes.set(xlabel="epoch (0 = untrained head)", ylabel="loss", title="loss")
    rank_axes.set(xlabel="epoch (0 = untrained head)", ylabel="rank-1", title="validation rank-1")
    for axes in (loss_axes, rank_axes):
        axes.grid(True, alpha=0.3)
        axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    logger.info("saved training curves to %s", path)
    return path
