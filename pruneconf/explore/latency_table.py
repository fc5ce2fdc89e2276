"""A latency table: how each prunable group's layers' time changes with its kept channel count.

``pruneconf latency`` writes one (:mod:`.latency_measure`); ``--target-latency`` plans with it
(:mod:`.latency_plan`). The file is JSON a user hands back to us, so it is read bounded
(:func:`~pruneconf.jsonfile.read_json`) and every value is checked, errors naming the file
and the key. One file caches several tables, one per measuring setup: the key is device,
dtype, batch, threads and layout, since each changes which channel counts are fast.

Prediction. Every timed *unit* (one call of a leaf module: a conv, a norm, an activation, a
pooling layer) has its dense time ``t_u``. A group's curve gives, per unit it touches, the
time at each measured kept count with every other group dense. Each unit's timings against a
group's kept count are fitted with a line (a fixed cost plus a part proportional to the
channels). A unit touched by several groups (a conv's input and output channels) is assumed
to scale by the product of its groups' ratios — as its MACs do. The model's predicted time is the untimed rest (the dense
model's time minus the sum of the units; functional ops such as a residual ``add`` live
there and are held constant) plus the units' predicted times.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import AbstractSet, Any, Mapping

import numpy as np

from ..errors import ConfigError
from ..jsonfile import read_json

FORMAT = "pruneconf-latency-table"
VERSION = 1
MAX_BYTES = 64 << 20
LAYOUTS = ("contiguous", "channels_last")
UNIT_INPUTS = "model order"  # units timed on inputs in the memory order they have in the model


@dataclasses.dataclass(frozen=True)
class Setup:
    """Where and how a table was measured: the cache key of a table in its file."""

    device: str
    dtype: str
    batch: int
    threads: int
    layout: str

    @property
    def key(self) -> str:
        return f"{self.device}|{self.dtype}|batch={self.batch}|threads={self.threads}|{self.layout}"


@dataclasses.dataclass
class Curve:
    """One group: measured kept counts (ascending, the last is all channels) and, per unit it
    touches, the milliseconds at each count; ``round_to`` is the step the measurements say is fast."""

    channels: int
    round_to: int
    counts: list[int]
    ms: dict[str, list[float]]
    whole: "Curve | None" = None  # the same group losing whole conv groups (``conv_groups: whole``)

    def of(self, whole: bool) -> "Curve":
        """This curve, or its whole-conv-groups curve when ``whole`` (and it was measured)."""
        return self.whole if whole and self.whole is not None else self

    def units(self) -> list[str]:
        """The units this group's timings touch, thinned or losing whole conv groups."""
        return list(dict.fromkeys([*self.ms, *(self.whole.ms if self.whole is not None else ())]))

    def to_json(self) -> dict[str, Any]:
        """As stored; ``whole`` only when measured, so a table without it keeps its hash."""
        out = {"channels": self.channels, "round_to": self.round_to, "counts": self.counts, "ms": self.ms}
        return {**out, "whole": self.whole.to_json()} if self.whole is not None else out

    def grid(self) -> np.ndarray:
        """Counts on the group's fast grid (multiples of ``round_to``) plus all channels."""
        return np.array([c for c in self.counts if c % self.round_to == 0 or c == self.channels], dtype=float)

    def ratio(self, unit: str, keep: float) -> float:
        """A unit's time at ``keep`` over its time with the group whole."""
        intercept, slope = self._lines()[unit]
        full = intercept + slope * self.channels
        return max(0.0, intercept + slope * keep) / full if full > 0 else 1.0

    def _lines(self) -> dict[str, tuple[float, float]]:
        """Per unit, ``ms = intercept + slope * kept`` fitted (least squares) to the grid points.

        A unit's time is a fixed cost plus a part proportional to the channels it carries; a
        line through all measured points resists the noise of any single timing, which a
        point-to-point curve would pass on to the plan. A negative slope (noise) counts as flat.
        """
        if getattr(self, "_cache", None) is None:
            grid = self.grid()
            rows = [self.counts.index(int(c)) for c in grid]
            self._cache = {}
            for unit, ms in self.ms.items():
                values = np.array([ms[i] for i in rows])
                slope, intercept = np.polyfit(grid, values, 1) if len(grid) > 1 else (0.0, values[0])
                if slope < 0:
                    slope, intercept = 0.0, float(values.mean())
                self._cache[unit] = (float(intercept), float(slope))
        return self._cache


@dataclasses.dataclass
class LatencyTable:
    setup: Setup
    device_name: str
    model: str
    fingerprint: str
    input_shapes: list[str]
    dense_ms: float
    units: dict[str, float]
    groups: dict[str, Curve]
    torch_version: str = ""
    min_run_time: float = 0.0
    statistic: str = "median"  # of the timed blocks: median, or min on a shared machine
    calibration: dict[str, Any] | None = None  # {"kept": {center: count}, "ms": whole model at those counts}
    memory: str = ""  # how the timings treated memory (.heap.timing_memory); "" from before it was recorded
    unit_inputs: str = ""  # how units' inputs were laid out (UNIT_INPUTS); "" from before it was recorded

    def to_json(self) -> dict[str, Any]:
        """The table as stored; ``memory`` and ``unit_inputs`` only when recorded, so an older table keeps its hash."""
        return {"device": self.setup.device, "device_name": self.device_name, "dtype": self.setup.dtype,
                "batch": self.setup.batch, "threads": self.setup.threads, "layout": self.setup.layout,
                "model": self.model, "fingerprint": self.fingerprint, "input_shapes": self.input_shapes,
                "torch": self.torch_version, "min_run_time": self.min_run_time,
                "statistic": self.statistic, "calibration": self.calibration,
                **({"memory": self.memory} if self.memory else {}),
                **({"unit_inputs": self.unit_inputs} if self.unit_inputs else {}), "dense_ms": self.dense_ms,
                "units": self.units,
                "groups": {c: g.to_json() for c, g in self.groups.items()}}

    @property
    def hash(self) -> str:
        """``sha256:`` and 16 hex digits of the table's canonical JSON: recipes record it."""
        payload = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()
        return "sha256:" + hashlib.sha256(payload).hexdigest()[:16]


class Predictor:
    """Predicted model milliseconds for kept counts per group (groups not given stay whole);
    the groups in ``whole`` lose whole conv groups, read from their ``Curve.whole``.

    The model's time is ``rest + scale * (sum of the units' predicted times)``. Units timed
    alone run with their input hot in cache and skip the functional ops between them, so the
    two constants are calibrated on whole-model timings: the dense model and the model with
    every group at about half its channels (``calibration``) fix both. Without that second
    point, ``rest`` is the untimed difference and ``scale`` 1 (less if the units add up to
    more than the dense model).
    """

    def __init__(self, table: LatencyTable) -> None:
        self.table = table
        self.touching: dict[str, list[str]] = {u: [] for u in table.units}
        for center, curve in table.groups.items():
            for unit in curve.units():
                self.touching[unit].append(center)
        timed = sum(table.units.values())
        self.rest, self.scale = max(0.0, table.dense_ms - timed), min(1.0, table.dense_ms / timed) if timed else 1.0
        calibration = table.calibration or {}
        if isinstance(calibration.get("kept"), dict) and isinstance(calibration.get("ms"), (int, float)):
            half = sum(self.unit_ms(u, calibration["kept"]) for u in table.units) / self.scale
            if timed - half > 0.05 * timed and table.dense_ms > calibration["ms"]:
                self.scale = (table.dense_ms - calibration["ms"]) / (timed - half)
                self.rest = table.dense_ms - self.scale * timed
                if self.rest < 0:
                    self.rest, self.scale = 0.0, table.dense_ms / timed

    def unit_ms(self, unit: str, kept: Mapping[str, float], whole: AbstractSet[str] = frozenset()) -> float:
        ratio = 1.0
        for center in self.touching[unit]:
            curve = self.table.groups[center].of(center in whole)
            if center in kept and unit in curve.ms:
                ratio *= curve.ratio(unit, kept[center])
        return self.scale * self.table.units[unit] * ratio

    def ms(self, kept: Mapping[str, float], whole: AbstractSet[str] = frozenset()) -> float:
        return self.rest + sum(self.unit_ms(u, kept, whole) for u in self.table.units)

    def saving(self, center: str, kept: Mapping[str, float], keep: float,
               whole: AbstractSet[str] = frozenset()) -> float:
        """Milliseconds saved by moving ``center`` from its count in ``kept`` to ``keep``."""
        moved = {**kept, center: keep}
        units = self.table.groups[center].of(center in whole).ms
        return sum(self.unit_ms(u, kept, whole) - self.unit_ms(u, moved, whole) for u in units)


# -- reading and writing ---------------------------------------------------------------------------

class _Check:
    """Typed access to one table's JSON, errors naming the file and the key."""

    def __init__(self, path: str, prefix: str) -> None:
        self.path, self.prefix = path, prefix

    def fail(self, message: str, key: str) -> ConfigError:
        return ConfigError(message, path=self.path, key=f"{self.prefix}{key}")

    def get(self, obj: Mapping, key: str, kind: type | tuple, where: str) -> Any:
        if not isinstance(obj, dict) or key not in obj:
            raise self.fail("missing", f"{where}{key}")
        value = obj[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise self.fail(f"expected {_kind_name(kind)}, got {type(value).__name__}", f"{where}{key}")
        return value

    def count(self, obj: Mapping, key: str, where: str, lo: int = 1) -> int:
        value = self.get(obj, key, int, where)
        if value < lo or value > 1 << 31:
            raise self.fail(f"expected an integer >= {lo}, got {value}", f"{where}{key}")
        return value

    def ms(self, value: Any, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1e9:
            raise self.fail(f"expected milliseconds (a number from 0 to 1e9), got {value!r}", key)
        return float(value)


def _kind_name(kind: type | tuple) -> str:
    names = {int: "an integer", float: "a number", str: "a string", dict: "a mapping", list: "a list"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _curve(check: _Check, center: str, raw: Any, units: Mapping[str, float]) -> Curve:
    where = f"groups.{center}."
    channels = check.count(raw, "channels", where)
    round_to = check.count(raw, "round_to", where)
    counts = check.get(raw, "counts", list, where)
    if not counts or any(isinstance(c, bool) or not isinstance(c, int) for c in counts) \
            or counts != sorted(set(counts)) or counts[0] < 1 or counts[-1] != channels:
        raise check.fail(f"expected ascending distinct channel counts ending at channels ({channels})",
                         f"{where}counts")
    ms = check.get(raw, "ms", dict, where)
    for unit, values in ms.items():
        if unit not in units:
            raise check.fail("names no unit of the table's `units`", f"{where}ms.{unit}")
        if not isinstance(values, list) or len(values) != len(counts):
            raise check.fail(f"expected a list of {len(counts)} timings, one per count", f"{where}ms.{unit}")
        ms[unit] = [check.ms(v, f"{where}ms.{unit}") for v in values]
    whole = raw.get("whole")
    if whole is not None:
        whole = _curve(check, f"{center}.whole", whole, units)
        if whole.channels != channels or whole.whole is not None:
            raise check.fail(f"expected the same group's {channels} channels losing whole conv groups",
                             f"{where}whole")
    return Curve(channels, round_to, counts, ms, whole)


def parse_table(raw: Any, path: str, key: str) -> LatencyTable:
    """A validated :class:`LatencyTable` from one entry of a table file's ``tables``."""
    check = _Check(path, f"tables.{key}.")
    if not isinstance(raw, dict):
        raise ConfigError("expected a mapping", path=path, key=f"tables.{key}")
    layout = check.get(raw, "layout", str, "")
    if layout not in LAYOUTS:
        raise check.fail(f"expected one of {', '.join(LAYOUTS)}, got {layout!r}", "layout")
    setup = Setup(check.get(raw, "device", str, ""), check.get(raw, "dtype", str, ""),
                  check.count(raw, "batch", ""), check.count(raw, "threads", ""), layout)
    if setup.key != key:
        raise check.fail(f"the entry was measured as '{setup.key}', not as its key says", "device")
    shapes = check.get(raw, "input_shapes", list, "")
    if not all(isinstance(s, str) for s in shapes):
        raise check.fail("expected a list of input shapes as strings", "input_shapes")
    units = check.get(raw, "units", dict, "")
    units = {u: check.ms(v, f"units.{u}") for u, v in units.items()}
    dense = check.ms(check.get(raw, "dense_ms", (int, float), ""), "dense_ms")
    if dense <= 0:
        raise check.fail("expected the dense model's milliseconds, above 0", "dense_ms")
    groups = {c: _curve(check, c, g, units) for c, g in check.get(raw, "groups", dict, "").items()}
    min_run_time = raw.get("min_run_time", 0.0)
    return LatencyTable(setup, check.get(raw, "device_name", str, ""), check.get(raw, "model", str, ""),
                        check.get(raw, "fingerprint", str, ""), shapes, dense, units, groups,
                        str(raw.get("torch", "")), float(min_run_time) if isinstance(min_run_time, (int, float))
                        else 0.0, str(raw.get("statistic", "median")), _calibration(check, raw, groups),
                        str(raw.get("memory", "")), str(raw.get("unit_inputs", "")))


def _calibration(check: _Check, raw: Mapping, groups: Mapping[str, Curve]) -> dict[str, Any] | None:
    value = raw.get("calibration")
    if value is None:
        return None
    kept = check.get(value, "kept", dict, "calibration.")
    for center, count in kept.items():
        if center not in groups or isinstance(count, bool) or not isinstance(count, int) \
                or not 1 <= count <= groups[center].channels:
            raise check.fail("expected a measured group's kept count", f"calibration.kept.{center}")
    return {"kept": kept, "ms": check.ms(check.get(value, "ms", (int, float), "calibration."), "calibration.ms")}


def read_tables(path: str | Path) -> dict[str, Any]:
    """The raw ``tables`` of a table file (entries are validated when selected)."""
    raw = read_json(path, MAX_BYTES, "latency table (from `pruneconf latency`)", "--latency-table")
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ConfigError(f"not a latency table: expected \"format\": \"{FORMAT}\"", path=str(path), key="format")
    if raw.get("version") != VERSION:
        raise ConfigError(f"unsupported version {raw.get('version')!r}; this pruneconf reads version {VERSION}",
                          path=str(path), key="version")
    tables = raw.get("tables")
    if not isinstance(tables, dict):
        raise ConfigError("expected a mapping of measuring setups to tables", path=str(path), key="tables")
    return tables


def dump_tables(tables: Mapping[str, LatencyTable | dict]) -> str:
    entries = {k: t.to_json() if isinstance(t, LatencyTable) else t for k, t in tables.items()}
    return json.dumps({"format": FORMAT, "version": VERSION, "tables": entries}, indent=1) + "\n"


def select_table(path: str | Path, fingerprint: str, batch: int | None = None) -> LatencyTable:
    """The file's table for the model with ``fingerprint`` (and ``batch``, if the file has several)."""
    tables = read_tables(path)
    matching = {k: v for k, v in tables.items() if isinstance(v, dict) and v.get("fingerprint") == fingerprint}
    if not matching:
        raise ConfigError(f"has no table for this model (fingerprint {fingerprint}); measure one with "
                          "`pruneconf latency MODEL --input-shape ... -o FILE`", path=str(path), key="tables")
    if len(matching) > 1 and batch is not None:
        matching = {k: v for k, v in matching.items() if v.get("batch") == batch} or matching
    if len(matching) > 1:
        raise ConfigError(f"holds {len(matching)} tables for this model ({', '.join(sorted(matching))}): keep the "
                          "one to plan with in its own file", path=str(path), key="tables")
    key, raw = next(iter(matching.items()))
    return parse_table(raw, str(path), key)
