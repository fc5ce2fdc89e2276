"""PNG plots of sweeps and sensitivity (matplotlib, an optional extra: ``pip install pruneconf[plot]``)."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

from ..errors import PruneconfError

if TYPE_CHECKING:
    from .sensitivity import Sensitivity
    from .sweep import SweepPoint


def require_matplotlib() -> None:
    """Fail before any work is done when plots cannot be drawn."""
    _pyplot()


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PruneconfError("plots need matplotlib: pip install 'pruneconf[plot]'") from None
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    return plt


def plot_sweep(points: Sequence["SweepPoint"], path: str | os.PathLike, title: str = "") -> None:
    """MACs and params (% of dense) against sparsity; latency on a second axis when measured."""
    plt = _pyplot()
    dense = points[0]
    xs = [p.sparsity for p in points]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(xs, [100 * p.macs / dense.macs for p in points], "o-", label="MACs")
    ax.plot(xs, [100 * p.params / dense.params for p in points], "s-", label="params")
    ax.set_xlabel("default_sparsity")
    ax.set_ylabel("% of the dense model")
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if all(p.latency_ms is not None for p in points):
        twin = ax.twinx()
        twin.plot(xs, [p.latency_ms for p in points], "^--", color="tab:green", label="latency (CPU)")
        twin.set_ylabel("latency, ms")
        twin.set_ylim(bottom=0)
        more_handles, more_labels = twin.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_sensitivity(result: "Sensitivity", path: str | os.PathLike, shown: int = 8) -> None:
    """The user's metric against sparsity, one line per group; the ``shown`` most sensitive are named."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    ranked = result.ranking()
    named = set(ranked[-shown:])
    for center in ranked:
        xs = [0.0] + list(result.sparsities)
        ys = [result.baseline] + [result.scores[center][s] for s in result.sparsities]
        if center in named:
            ax.plot(xs, ys, "o-", label=center)
        else:
            ax.plot(xs, ys, "-", color="0.8", linewidth=0.8)
    ax.set_xlabel("sparsity of one group (all others dense)")
    ax.set_ylabel("metric (higher is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title="most sensitive", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
