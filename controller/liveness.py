"""Agent liveness deadlines (pure): the controller alone decides that an agent is lost.

A heap of (due, agent) with the current due time per agent in a dict: a beat pushes a new entry and leaves the
old one to be skipped when it surfaces, so a beat, the next deadline and the expired ones cost O(log n) each,
not a scan of every agent (10,000 agents beat many times a second)."""

from __future__ import annotations

import heapq


class Deadlines:
    def __init__(self) -> None:
        self._due: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def beat(self, agent_id: str, now: float, within: float) -> None:
        due = now + within
        self._due[agent_id] = due
        heapq.heappush(self._heap, (due, agent_id))
        if len(self._heap) > 4 * len(self._due) + 64:  # stale entries of agents that beat many times
            self._heap = [(d, a) for a, d in self._due.items()]
            heapq.heapify(self._heap)

    def forget(self, agent_id: str) -> None:
        self._due.pop(agent_id, None)

    def _drop_stale(self) -> None:
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)

    def expired(self, now: float) -> list[str]:
        gone = []
        self._drop_stale()
        while self._heap and self._heap[0][0] <= now:
            _, agent_id = heapq.heappop(self._heap)
            del self._due[agent_id]
            gone.append(agent_id)
            self._drop_stale()
        return sorted(gone)

    def next_due(self) -> float | None:
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def __contains__(self, agent_id: str) -> bool:
        return agent_id in self._due

    def __len__(self) -> int:
        return len(self._due)
