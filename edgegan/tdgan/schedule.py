"""Who is online when: a sequence of tasks (seed 003 §4.2 single- and multiple-entity
settings) with per-step join/leave events on top.

Task t owns the global steps [start_t, start_t + steps_t); its nodes are online for the whole
task unless an :class:`Event` inside the task says otherwise. An event ``(step, "leave", k)``
takes node k offline from ``step`` on, ``(step, "join", k)`` brings it (back) online; events
last until the next event for that node or the end of their task. A node may leave in the
middle of a task, come back later, or join a task it does not belong to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

from edgegan.errors import require


@dataclass(frozen=True)
class Task:
    """A task: the nodes online by default, for ``steps`` generator steps."""

    name: str
    nodes: tuple[str, ...]
    steps: int


@dataclass(frozen=True)
class Event:
    """A membership change at global step ``step`` (applied before that step runs)."""

    step: int
    kind: Literal["join", "leave"]
    node_id: str


@dataclass
class Schedule:
    """Tasks in order plus extra join/leave events; query with :meth:`online_at` / :meth:`events_at`."""

    tasks: list[Task]
    events: list[Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        require(len(self.tasks) > 0, "schedule.tasks", "no tasks", "give at least one task")
        for i, t in enumerate(self.tasks):
            require(t.steps >= 1, f"schedule.tasks[{i}].steps", f"must be >= 1, got {t.steps}")
            require(len(set(t.nodes)) == len(t.nodes), f"schedule.tasks[{i}].nodes", f"duplicate node in {t.nodes}")
        for i, e in enumerate(self.events):
            require(e.kind in ("join", "leave"), f"schedule.events[{i}].kind", f"unknown kind {e.kind!r}",
                    "use join or leave")
            require(0 <= e.step < self.total_steps, f"schedule.events[{i}].step",
                    f"{e.step} is outside [0, {self.total_steps})")
        self.events = sorted(self.events, key=lambda e: e.step)

    @classmethod
    def single_entity(cls, node_ids: Sequence[str], steps_per_task: int) -> "Schedule":
        """One node online per task, in order (seed 003 §4.2, single-entity)."""
        return cls([Task(f"task{i + 1}", (k,), steps_per_task) for i, k in enumerate(node_ids)])

    @classmethod
    def multiple_entity(cls, groups: Sequence[Sequence[str]], steps_per_task: int) -> "Schedule":
        """Several nodes online per task (seed 003 §4.2, multiple-entity)."""
        return cls([Task(f"task{i + 1}", tuple(g), steps_per_task) for i, g in enumerate(groups)])

    @property
    def total_steps(self) -> int:
        return sum(t.steps for t in self.tasks)

    @property
    def task_starts(self) -> list[int]:
        starts, s = [], 0
        for t in self.tasks:
            starts.append(s)
            s += t.steps
        return starts

    @property
    def nodes(self) -> list[str]:
        """Every node the schedule mentions, first appearance first."""
        out: dict[str, None] = {}
        for t in self.tasks:
            out.update(dict.fromkeys(t.nodes))
        out.update(dict.fromkeys(e.node_id for e in self.events))
        return list(out)

    def task_index(self, step: int) -> int:
        """Index of the task that owns global ``step``."""
        require(0 <= step < self.total_steps, "step", f"{step} is outside [0, {self.total_steps})")
        starts = self.task_starts
        return max(i for i, s in enumerate(starts) if s <= step)

    def online_at(self, step: int) -> list[str]:
        """Nodes online during global ``step`` (task order, then event joins)."""
        t = self.task_index(step)
        start = self.task_starts[t]
        state = {k: True for k in self.tasks[t].nodes}
        for e in self.events:
            if start <= e.step <= step:
                state[e.node_id] = e.kind == "join"
        return [k for k, on in state.items() if on]

    def events_at(self, step: int) -> list[Event]:
        """Membership changes to apply before ``step``: leaves first, then joins."""
        before = set(self.online_at(step - 1)) if step > 0 else set()
        now = self.online_at(step)
        leaves = [Event(step, "leave", k) for k in self.online_at(step - 1) if k not in now] if step > 0 else []
        return leaves + [Event(step, "join", k) for k in now if k not in before]

    def apply_events(self, step: int, is_online: Callable[[str], bool], join: Callable[[str], None],
                     leave: Callable[[str], None]) -> None:
        """Apply :meth:`events_at` ``step`` to a run: ``leave(k)`` for each node going offline that
        ``is_online``, then ``join(k)`` for each node coming online that is not (a node may have
        dropped out of the run on its own, e.g. crashed, since the schedule last saw it)."""
        for ev in self.events_at(step):
            if ev.kind == "leave" and is_online(ev.node_id):
                leave(ev.node_id)
            elif ev.kind == "join" and not is_online(ev.node_id):
                join(ev.node_id)
