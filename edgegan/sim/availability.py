"""Who is online when: explicit windows, seeded churn, or a CSV trace → per-node online windows,
converted to the TDGAN core's :class:`~edgegan.tdgan.schedule.Schedule` (one task holding the
nodes online at step 0, plus join/leave :class:`~edgegan.tdgan.schedule.Event` s). The engine
applies ``Schedule.events_at(step)`` before every step, so there is one membership model.

Churn (per node, in steps): alternating online / offline periods with durations
``max(1, round(Exp(mean)))``, the first state online with probability ``initial_online``
(stationary ``mean_up / (mean_up + mean_down)`` by default), drawn from
``numpy.random.default_rng([seed, node index])`` so a node's trace does not depend on the others.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edgegan.errors import EdgeganError, require
from edgegan.tdgan.schedule import Event, Schedule, Task

Window = tuple[int, int]  # [join, leave) in steps


@dataclass
class Availability:
    """Online windows per node over ``steps`` steps, and crashes (node, step): the node gets its
    request at that step and never answers (its window ends right after that step)."""

    nodes: list[str]
    steps: int
    windows: dict[str, list[Window]]
    crashes: dict[str, int]

    def online_at(self, step: int) -> list[str]:
        """Nodes online during ``step`` (node order)."""
        return [k for k in self.nodes if any(a <= step < b for a, b in self.windows.get(k, []))]

    def online_sets(self) -> list[list[str]]:
        return [self.online_at(t) for t in range(self.steps)]

    def to_schedule(self) -> Schedule:
        """The TDGAN core's schedule: one task (nodes online at 0) plus join/leave events."""
        first = tuple(k for k in self.nodes if any(a == 0 for a, _ in self.windows.get(k, [])))
        events = []
        for k in self.nodes:
            for a, b in self.windows.get(k, []):
                if a > 0:
                    events.append(Event(a, "join", k))
                if b < self.steps:
                    events.append(Event(b, "leave", k))
        return Schedule([Task("run", first, self.steps)], events)

    def online_throughout(self, node: str, start: int, end: int) -> bool:
        """True if ``node`` is online for every step in [start, end) and does not crash there."""
        if node in self.crashes and start <= self.crashes[node] < end:
            return False
        return any(a <= start and end <= b for a, b in self.windows.get(node, []))

    def online_from_start(self, node: str) -> int:
        """Steps ``node`` stays online from step 0 (0 if it starts offline)."""
        ws = self.windows.get(node, [])
        return ws[0][1] if ws and ws[0][0] == 0 else 0


def _normalise(node: str, windows: list[Window], steps: int, field: str) -> list[Window]:
    """Clip to [0, steps), sort, check no overlap, merge touching windows."""
    out: list[Window] = []
    for a, b in sorted((max(0, a), min(steps, b)) for a, b in windows):
        if a >= b:
            continue
        if out and a < out[-1][1]:
            raise EdgeganError(field, f"windows of node '{node}' overlap: {out[-1]} and {(a, b)}",
                               "give each node disjoint [join, leave) windows")
        if out and a == out[-1][1]:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def from_windows(nodes: Sequence[str], steps: int, windows: Sequence[tuple[str, int, int | None]],
                 unlisted_online: bool = True, field: str = "schedule.windows") -> dict[str, list[Window]]:
    """Explicit ``(node, join, leave)`` windows; unlisted nodes online throughout or never."""
    out: dict[str, list[Window]] = {k: [] for k in nodes}
    for i, (node, join, leave) in enumerate(windows):
        require(node in out, f"{field}[{i}].node", f"unknown node {node!r}")
        out[node].append((int(join), steps if leave is None else int(leave)))
    listed = {w[0] for w in windows}
    for k in nodes:
        if k not in listed and unlisted_online:
            out[k] = [(0, steps)]
    return {k: _normalise(k, ws, steps, field) for k, ws in out.items()}


def churn(nodes: Sequence[str], steps: int, mean_up: float, mean_down: float, seed: int,
          initial_online: float | None = None) -> dict[str, list[Window]]:
    """Seeded exponential up/down periods per node (see module docstring)."""
    require(mean_up > 0 and mean_down > 0, "schedule.churn", "mean_up and mean_down must be > 0")
    p0 = mean_up / (mean_up + mean_down) if initial_online is None else float(initial_online)
    out: dict[str, list[Window]] = {}
    for i, k in enumerate(nodes):
        rng = np.random.default_rng([int(seed), i])
        up = bool(rng.random() < p0)
        t, ws = 0, []
        while t < steps:
            d = max(1, int(round(rng.exponential(mean_up if up else mean_down))))
            if up:
                ws.append((t, min(steps, t + d)))
            t += d
            up = not up
        out[k] = ws
    return out


def from_trace(path: str | Path, nodes: Sequence[str], steps: int) -> dict[str, list[Window]]:
    """CSV availability trace with header ``node,join,leave`` (node id or index; empty leave = end).

    Nodes absent from the trace are never online.
    """
    p = Path(path)
    require(p.is_file(), "schedule.trace", f"file '{p}' not found", "give a CSV with header node,join,leave")
    rows: list[tuple[str, int, int | None]] = []
    with p.open(newline="") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        require(cols[:3] == ["node", "join", "leave"], "schedule.trace",
                f"'{p}' has header {cols}", "the header must be node,join,leave")
        for line, row in enumerate(reader, start=2):
            where = f"schedule.trace line {line}"
            node = (row.get("node") or "").strip()
            if node.isdigit() and node not in nodes:
                idx = int(node)
                require(idx < len(nodes), where, f"node index {idx} >= {len(nodes)} nodes")
                node = nodes[idx]
            require(node in nodes, where, f"unknown node {node!r}", f"use ids {nodes[0]}.. or indices")
            try:
                join = int((row.get("join") or "").strip())
                leave_s = (row.get("leave") or "").strip()
                leave = int(leave_s) if leave_s else None
            except ValueError:
                raise EdgeganError(where, f"join/leave must be integers, got {row.get('join')!r}, "
                                   f"{row.get('leave')!r}") from None
            require(join >= 0 and (leave is None or leave > join), where,
                    f"need 0 <= join < leave, got {join}, {leave}")
            rows.append((node, join, leave))
    return from_windows(nodes, steps, rows, unlisted_online=False, field="schedule.trace")


def apply_crashes(windows: dict[str, list[Window]], crashes: dict[str, int], steps: int) -> dict[str, list[Window]]:
    """A node crashing at step s is online at s (it gets the request) and offline from s + 1 until
    its next window that starts later."""
    out = {k: list(ws) for k, ws in windows.items()}
    for k, s in crashes.items():
        ws = out.get(k, [])
        hit = [w for w in ws if w[0] <= s < w[1]]
        require(bool(hit), "schedule.crashes", f"node '{k}' is not online at step {s}",
                "crash a node only while its schedule has it online")
        a, _ = hit[0]
        out[k] = [w for w in ws if w != hit[0]]
        out[k] = sorted(out[k] + [(a, s + 1)])
    return {k: _normalise(k, ws, steps, "schedule.crashes") for k, ws in out.items()}


def build_availability(spec, nodes: Sequence[str], steps: int, seed: int,
                       base_dir: str | Path | None = None) -> Availability:
    """Availability from a :class:`~edgegan.sim.scenario.ScheduleSpec`."""
    nodes = list(nodes)
    if spec.kind == "always":
        windows = {k: [(0, steps)] for k in nodes}
    elif spec.kind == "windows":
        windows = from_windows(nodes, steps, [(w.node, w.join, w.leave) for w in spec.windows],
                               spec.unlisted == "online")
    elif spec.kind == "churn":
        c = spec.churn
        windows = churn(nodes, steps, c.mean_up, c.mean_down, seed, c.initial_online)
    else:
        path = Path(spec.trace)
        if not path.is_absolute() and base_dir is not None and not path.is_file():
            path = Path(base_dir) / path
        windows = from_trace(path, nodes, steps)
    crashes: dict[str, int] = {}
    for i, c in enumerate(spec.crashes):
        require(c.step < steps, f"schedule.crashes[{i}].step", f"{c.step} is outside [0, {steps})")
        require(c.node not in crashes, f"schedule.crashes[{i}].node", f"node '{c.node}' crashes twice")
        crashes[c.node] = c.step
    windows = apply_crashes(windows, crashes, steps)
    return Availability(nodes, steps, windows, crashes)
