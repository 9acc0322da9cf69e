"""Agent liveness deadlines (pure): the controller alone decides that an agent is lost."""

from __future__ import annotations


class Deadlines:
    def __init__(self) -> None:
        self._due: dict[str, float] = {}

    def beat(self, agent_id: str, now: float, within: float) -> None:
        self._due[agent_id] = now + within

    def forget(self, agent_id: str) -> None:
        self._due.pop(agent_id, None)

    def expired(self, now: float) -> list[str]:
        gone = [a for a, due in self._due.items() if due <= now]
        for agent_id in gone:
            del self._due[agent_id]
        return sorted(gone)

    def next_due(self) -> float | None:
        return min(self._due.values(), default=None)

    def __contains__(self, agent_id: str) -> bool:
        return agent_id in self._due
