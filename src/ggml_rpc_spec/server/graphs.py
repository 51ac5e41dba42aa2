"""The graphs a connection keeps for GRAPH_RECOMPUTE, per device.

Up to 7.0.0 a device keeps the last graph computed on it (Graphs.LAST).  From 8.0.0 it keeps a
cache keyed by the graph uid each GRAPH_COMPUTE carries (Graphs.UID): uid 0 is never kept,
and when the cache holds GRAPH_CACHE_LIMIT graphs the next one clears it first, exactly as the
upstream client clears its own record of what the server holds (so the two agree on which
uids GRAPH_RECOMPUTE may name).  Freeing a buffer discards every graph that reaches it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ggml_rpc_spec.executor import GraphPlan
from ggml_rpc_spec.protocol import Graph
from ggml_rpc_spec.protocol.columns import GRAPH_CACHE_LIMIT, Graphs


@dataclass
class StoredGraph:
    """A computed graph: GRAPH_RECOMPUTE runs its plan again, and so does a GRAPH_COMPUTE
    carrying the same bytes (clients before 7.0 resend the unchanged graph for every token)."""

    plan: GraphPlan
    graph: Graph


@dataclass
class DeviceGraphs:
    kept: dict[int | None, StoredGraph] = field(default_factory=dict)  # uid (None: the last graph) -> graph
    last: StoredGraph | None = None  # the latest graph computed, kept or not: its steps seed the next plan


class GraphStore:
    """Every device's graphs, for one connection, in one profile's way of keeping them."""

    def __init__(self, mode: Graphs) -> None:
        self.mode = mode
        self.devices: dict[int, DeviceGraphs] = {}

    def _device(self, device: int) -> DeviceGraphs:
        return self.devices.setdefault(device, DeviceGraphs())

    def key(self, uid: int | None) -> int | None:
        return uid if self.mode is Graphs.UID else None

    def get(self, device: int, uid: int | None) -> StoredGraph | None:
        """The graph GRAPH_RECOMPUTE names (uid None: the device's last graph)."""
        found = self.devices.get(device)
        return found.kept.get(self.key(uid)) if found is not None else None

    def last(self, device: int) -> StoredGraph | None:
        found = self.devices.get(device)
        return found.last if found is not None else None

    def keep(self, device: int, uid: int | None, stored: StoredGraph) -> None:
        slot = self._device(device)
        slot.last = stored
        if self.mode is Graphs.LAST:
            slot.kept[None] = stored
        elif uid:
            if len(slot.kept) >= GRAPH_CACHE_LIMIT:
                slot.kept.clear()
            slot.kept[uid] = stored

    def discard_using(self, handle: int) -> None:
        """FREE_BUFFER of `handle`: every graph whose nodes reach it goes (§8.3)."""
        for slot in self.devices.values():
            for key in [k for k, g in slot.kept.items() if handle in g.plan.handles]:
                del slot.kept[key]
            if slot.last is not None and handle in slot.last.plan.handles:
                slot.last = None

    def clear(self) -> None:
        self.devices.clear()
