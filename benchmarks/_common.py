"""Shared bits of the benchmark scripts: argument parsing, table printing, JSON output, process-tree memory."""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import torch


def parser(description: str, default_json: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smaller budgets (CI-sized)")
    p.add_argument("--json", default=default_json, help="where to write the JSON results")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    return p


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def print_table(rows: Sequence[dict[str, Any]], title: str = "") -> None:
    """Plain fixed-width table of dict rows (columns from the first row)."""
    if not rows:
        return
    cols = list(rows[0].keys())
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    width = {c: max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in cols}
    if title:
        print(title)
    print("  ".join(c.ljust(width[c]) for c in cols))
    print("  ".join("-" * width[c] for c in cols))
    for r in rows:
        print("  ".join(fmt(r.get(c, "")).ljust(width[c]) for c in cols))


def write_json(path: str | Path, obj: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))
    print(f"wrote {path}")


def descendants(root: int) -> list[int]:
    """``root`` and every process below it (from /proc parent ids)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _name(pid: int) -> str:
    """A short name for a process: its Ray role (ray::NodeHost, raylet, gcs_server, …) or program."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in args if a]
    if not words:
        return "?"
    if words[0].startswith("ray::"):
        return words[0].split()[0]
    script = next((w for w in words[1:] if w.endswith(".py")), words[0])
    return Path(script).name


class PeakMemory:
    """Samples Σ RSS over this process and all its descendants; ``peak`` in bytes, and at the peak
    the RSS of each process (:meth:`breakdown`)."""

    def __init__(self, every: float = 0.1) -> None:
        from edgegan.sim.host import proc_memory_bytes  # here, not at import: it loads grpc

        self._rss = proc_memory_bytes
        self.every, self.peak, self.peak_procs = every, 0, 0
        self._at_peak: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            rss = [(p, self._rss(p, "VmRSS")) for p in descendants(me)]
            total = sum(r for _, r in rss)
            if total > self.peak:
                names = ["driver" if p == me else _name(p) for p, _ in rss]
                self.peak, self.peak_procs, self._at_peak = total, len(rss), [(n, r) for n, (_, r) in zip(names, rss)]
            self._stop.wait(self.every)

    def breakdown(self) -> dict[str, float]:
        """GiB per process name at the peak (same names summed), largest first."""
        out: dict[str, float] = {}
        for name, r in self._at_peak:
            out[name] = out.get(name, 0.0) + r / 2**30
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def __enter__(self) -> "PeakMemory":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
