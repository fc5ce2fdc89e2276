"""``pruneconf sweep``: one recipe per sparsity, each applied to a copy of the model and measured.

Every point writes ``sparsity_0.10.yaml`` (a recipe to keep and edit), prunes a deep copy of
the model with it (verified, like ``pruneconf prune``) and counts the MACs and parameters of
the shrunk copy; with ``latency`` it also times it on the CPU. The dense model is the first
row, so the table and plot show the trade-off against the starting point.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import io
import logging
import math
from pathlib import Path
from typing import Any, Callable, Sequence

from ruamel.yaml.comments import CommentedMap
from torch import nn

from .._progress import progress
from ..distributed import gather_shares, rank_and_world
from ..errors import ConfigError
from ..recipe.applied import record_calibration
from ..recipe.load import recipe_from_document
from ..recipe.yamlio import dump_document, write_atomic
from ..table import format_table
from .latency import latency_ms

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    sparsity: float
    recipe: str | None  # file name, None for the dense row
    macs: int
    params: int
    latency_ms: float | None = None


def parse_sparsities(text: str, key: str = "--sparsity", allow_one: bool = False) -> list[float]:
    """``0.1:0.9:0.1`` (start:stop:step, stop included) or ``0.25,0.5``; each in (0, 1), or in
    (0, 1] with ``allow_one`` (a latency target of 1 keeps the model whole)."""
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            if step <= 0:
                raise ValueError
            count = math.floor((stop - start) / step + 1e-9) + 1
            values = [round(start + i * step, 10) for i in range(max(count, 0))]
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"expected START:STOP:STEP or a comma-separated list, got '{text}'",
                          key=key) from None
    if not values or any(not (0 < v < 1 or allow_one and v == 1) for v in values):
        what = "latency fractions in (0, 1]" if allow_one else "sparsities in (0, 1)"
        raise ConfigError(f"expected {what}, got '{text}'", key=key)
    return values


def recipe_name(value: float, label: str = "sparsity") -> str:
    return f"{label}_{value:.2f}.yaml"


@contextlib.contextmanager
def _without_layer_logs():
    """Per-layer resize lines for every point would bury the progress; ``--debug`` keeps them."""
    logger = logging.getLogger("pruneconf")
    level = logger.level
    if logger.getEffectiveLevel() >= logging.INFO:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _measure(model: nn.Module, inputs: Any, with_latency: bool) -> tuple[int, int, float | None]:
    from ..analysis import total_macs, total_params
    from ..trace import trace

    graph = trace(model, inputs)
    return total_macs(graph), total_params(graph), latency_ms(model, inputs) if with_latency else None


def run_sweep(model: nn.Module, inputs: Any, sparsities: Sequence[float],
              make_doc: Callable[[float], CommentedMap], out_dir: str | Path,
              with_latency: bool = False, calibration: Any = None, label: str = "sparsity") -> list[SweepPoint]:
    """Write, apply and measure one recipe per sparsity; ``model`` itself is left untouched.

    ``calibration`` (batches) is gathered once, at the first point, for a data metric; every
    point ranks by the same statistics of the dense model. Under ``torch.distributed``
    (``torchrun``) the points are dealt out across the ranks (each gathers the calibration
    at its own first point), every rank returns every point, and rank 0 writes the recipes."""
    out_dir = Path(out_dir)
    points = [SweepPoint(0.0, None, *_measure(model, inputs, with_latency))]
    rank, world = rank_and_world()
    mine = list(sparsities)[rank::world]
    if world > 1:
        log.info("rank %d: %d of the %d sparsities", rank, len(mine), len(sparsities))

    def share() -> list[tuple[SweepPoint, str]]:
        out, batches = [], calibration
        for sparsity in progress(mine, "sweep"):
            path = out_dir / recipe_name(sparsity, label)
            point, text, batches = _point(model, inputs, sparsity, make_doc(sparsity), path, with_latency, batches,
                                          label)
            out.append((point, text))
        return out

    shares = gather_shares(share)
    for index in range(len(sparsities)):
        point, text = shares[index % world][index // world]
        if rank == 0:
            write_atomic(out_dir / point.recipe, text)
        points.append(point)
    return points


def _point(model: nn.Module, inputs: Any, sparsity: float, doc: CommentedMap, path: Path, with_latency: bool,
           calibration: Any, label: str) -> tuple[SweepPoint, str, Any]:
    """Prune a copy of ``model`` by ``doc`` and measure it: the point, the recipe's text, and
    the calibration to rank the next points by (gathered here if ``calibration`` was batches)."""
    from ..pruner import Pruner

    recipe = recipe_from_document(doc, str(path))
    pruned = copy.deepcopy(model)
    pruner = Pruner(pruned, inputs, recipe)
    if calibration is not None:
        calibration = pruner.calibrate(calibration)
    if pruner.calibration is not None:
        record_calibration(doc, pruner.calibration.batches)
    text = dump_document(doc)
    with _without_layer_logs():
        pruner.prune()
    point = SweepPoint(sparsity, path.name, *_measure(pruned, inputs, with_latency))
    log.info("%s %.2f: %s MACs, %s params", label, sparsity, f"{point.macs:,}", f"{point.params:,}")
    return point, text, calibration


def _rows(points: Sequence[SweepPoint], label: str) -> tuple[list[str], list[list[Any]]]:
    dense = points[0]
    timed = all(p.latency_ms is not None for p in points)
    headers = [label.replace("_", " "), "recipe", "MACs", "MACs %", "params", "params %"]
    headers += ["latency ms", "speed-up"] if timed else []
    rows = []
    for p in points:
        row = [f"{p.sparsity:.2f}", p.recipe or "(dense)", p.macs, f"{100 * p.macs / dense.macs:.1f}",
               p.params, f"{100 * p.params / dense.params:.1f}"]
        if timed:
            row += [f"{p.latency_ms:.3f}", f"{dense.latency_ms / p.latency_ms:.2f}x"]
        rows.append(row)
    return headers, rows


def sweep_markdown(points: Sequence[SweepPoint], label: str = "sparsity") -> str:
    headers, rows = _rows(points, label)
    cells = [[f"{v:,}" if isinstance(v, int) else v for v in row] for row in rows]
    return format_table(headers, cells, numeric=[h != "recipe" for h in headers]) + "\n"


def sweep_csv(points: Sequence[SweepPoint], label: str = "sparsity") -> str:
    headers, rows = _rows(points, label)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([h.replace(" ", "_").replace("-", "_").replace("%", "pct").lower() for h in headers])
    writer.writerows(rows)
    return out.getvalue()
