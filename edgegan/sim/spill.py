"""A pool worker's spill file: where a virtual node's packed state waits between activations."""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from edgegan.errors import require

#: The spill file (one fixed-size slot per hosted node) and its node list in slot order.
SLAB, SLOTS = "slab.bin", "slots.txt"
#: Bytes of the tag that opens every slot.
TAG_BYTES = 8


def _tag(node_id: str) -> bytes:
    """The tag that opens a slot holding ``node_id``'s parked state (zeros: no state)."""
    return (1 + zlib.crc32(node_id.encode())).to_bytes(TAG_BYTES, "little")


class SpillFile:
    """One worker's spill file in ``folder``: ``slab.bin`` holds one slot per hosted node (a tag naming
    the node, then its packed row of ``row_bytes``; a zero tag: nothing parked there) and ``slots.txt``
    lists the nodes in slot order, so another worker can continue a lost worker's nodes. Written raw,
    without fsync: a cache that lives as long as the run.

    Parameters
    ----------
    folder : where both files live (created by the caller); ``slab.bin`` is truncated.
    owner : who writes it, for error messages (``worker 3``).
    """

    def __init__(self, folder: Path, owner: str) -> None:
        self.folder = folder
        self.owner = owner
        self.row_bytes = 0  # set once the packed row layout is known
        self.slot: dict[str, int] = {}  # node -> its slot
        self.parked: set[str] = set()  # nodes whose state is in their slot now
        self._fd = os.open(folder / SLAB, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)  # this run's only
        (folder / SLOTS).write_text("")

    @property
    def slot_bytes(self) -> int:
        return TAG_BYTES + self.row_bytes

    def _offset(self, node_id: str) -> int:
        return self.slot[node_id] * self.slot_bytes

    def add(self, node_ids: Sequence[str]) -> None:
        """Give each of ``node_ids`` the next free slot and list it in ``slots.txt``."""
        for node_id in node_ids:
            self.slot[node_id] = len(self.slot)
        with open(self.folder / SLOTS, "a") as f:
            f.write("".join(f"{node_id}\n" for node_id in node_ids))

    def park(self, node_id: str, row: np.ndarray) -> int:
        """Write ``node_id``'s packed ``row`` into its slot; returns the bytes written."""
        written = os.pwritev(self._fd, [_tag(node_id), row], self._offset(node_id))
        self.parked.add(node_id)
        return written

    def restore(self, node_id: str, row: np.ndarray) -> None:
        """Read ``node_id``'s parked state into ``row``; its slot is empty afterwards."""
        tag = bytearray(TAG_BYTES)
        os.preadv(self._fd, [tag, row], self._offset(node_id))
        require(bytes(tag) == _tag(node_id), "spill", f"{self.owner}: the spill slot of node "
                f"'{node_id}' does not hold its state", "do not share a spill folder between runs")
        self.forget(node_id)

    def forget(self, node_id: str) -> None:
        """Empty ``node_id``'s slot (a slot holds state only while the node is parked)."""
        os.pwrite(self._fd, bytes(TAG_BYTES), self._offset(node_id))
        self.parked.discard(node_id)

    def adopt(self, source: Path, node_ids: Sequence[str]) -> None:
        """Copy into this file the state of each of ``node_ids`` that the spill file in folder
        ``source`` (another worker's, same row layout) holds readably; the others stay empty."""
        try:
            slots = {k: i for i, k in enumerate((source / SLOTS).read_text().splitlines())}
            fd = os.open(source / SLAB, os.O_RDONLY)
        except OSError:  # that worker's folder is gone or on another machine
            return
        size = self.slot_bytes
        try:
            for node_id in node_ids:
                if node_id in slots:
                    state = os.pread(fd, size, slots[node_id] * size)
                    if len(state) == size and state[:TAG_BYTES] == _tag(node_id):
                        os.pwrite(self._fd, state, self._offset(node_id))
                        self.parked.add(node_id)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
