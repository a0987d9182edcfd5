"""A feedback audit log for fault tests and soaks: who sent which step's feedback and
which the cloud applied, so a run can show that no accepted feedback was lost or applied twice.

Off unless the environment variable ``EDGEGAN_AUDIT_DIR`` names a folder; then every process
appends JSON lines to ``<dir>/<role>-<pid>.jsonl`` (line-buffered: a SIGKILL loses at most the
line being written). Edges write ``{"kind": "sent", "node", "step"}`` as a reply is handed to
the stream (before the write, so a SIGKILL right after it cannot leave an applied reply
unrecorded; a write that then fails shows as a failure in the cloud's record); the cloud writes ``{"kind": "resume", "step"}`` when it starts and, after each generator
step, ``{"kind": "step", "step", "asked", "applied", "failed": {node: reason}}``.
:func:`summarize` reconciles a folder.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

ENV = "EDGEGAN_AUDIT_DIR"


class AuditLog:
    """Appends records for ``role`` when ``EDGEGAN_AUDIT_DIR`` is set; a no-op otherwise."""

    def __init__(self, role: str) -> None:
        folder = os.environ.get(ENV)
        self._f = None
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            self._f = open(Path(folder) / f"{role}-{os.getpid()}.jsonl", "a", buffering=1)

    def write(self, kind: str, **fields: Any) -> None:
        if self._f is not None:
            self._f.write(json.dumps({"kind": kind, "t": time.time(), **fields}) + "\n")


def _read(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # the line a SIGKILL cut short
            pass
    return out


def summarize(folder: str | Path, since_step: int = 0) -> dict[str, Any]:
    """Reconcile the edges' ``sent`` records with the cloud's applied ones, keyed by (node, step).

    Cloud processes are taken in start order; when one resumes from a checkpoint at step r, the
    steps ≥ r of the one before it were rolled back with that process (their effect on G never
    reached a checkpoint) and are redone, so they are set aside (``rolled_back``).
    ``duplicated``: (node, step) pairs applied more than once; ``lost``: pairs an edge sent for
    a step the cloud settled, asked of that node, neither applied nor recorded as failed
    (timeout, disconnect, refusal); ``failed``: asked, not applied, with a recorded failure;
    ``unsettled``: sent for a step no surviving cloud record settles (the cloud died mid-step);
    ``phantom``: applied although no edge recorded sending it; ``failures_by_node``: steps
    ≥ ``since_step`` in which each node was asked but failed.
    """
    folder = Path(folder)
    clouds = sorted((_read(p) for p in folder.glob("cloud-*.jsonl")), key=lambda r: r[0]["t"] if r else 0.0)
    clouds = [c for c in clouds if c]
    steps: dict[int, dict[str, set[str]]] = {}  # a step that applied nothing is asked again: merged
    applied: Counter = Counter()
    rolled_back = 0
    for i, records in enumerate(clouds):
        nxt = next((r["step"] for r in clouds[i + 1] if r["kind"] == "resume"), None) if i + 1 < len(clouds) else None
        for r in records:
            if r["kind"] != "step":
                continue
            if nxt is not None and r["step"] >= nxt:
                rolled_back += 1
                continue
            rec = steps.setdefault(r["step"], {"asked": set(), "applied": set(), "failed": set()})
            for key in rec:
                rec[key].update(r[key])
            applied.update((n, r["step"]) for n in r["applied"])
    sent: Counter = Counter()
    for p in folder.glob("edge-*.jsonl"):
        sent.update((r["node"], r["step"]) for r in _read(p) if r["kind"] == "sent")
    lost = failed = unsettled = 0
    for (node, s) in sent:
        rec = steps.get(s)
        if rec is None or node not in rec["asked"]:
            unsettled += 1
        elif node in rec["failed"]:
            failed += 1
        elif node not in rec["applied"]:
            lost += 1
    return {"sent": sum(sent.values()), "applied": sum(applied.values()), "steps": len(steps),
            "duplicated": sum(c - 1 for c in applied.values() if c > 1),
            "sent_twice": sum(c - 1 for c in sent.values() if c > 1),
            "lost": lost, "failed": failed, "unsettled": unsettled, "rolled_back": rolled_back,
            "phantom": sum(1 for k in applied if k not in sent),
            "failures_by_node": dict(Counter(n for k, r in steps.items() if k >= since_step for n in r["failed"]))}
