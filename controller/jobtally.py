"""What the controller knows of every job record, kept without the records (a bounded cache lets ended ones go:
`incl.controller.store.Retention`): how many jobs are in each state, and when each agent's last attempt ended."""

from __future__ import annotations

from collections import Counter

from incl.proto.messages import Job, JobState


class JobTally:
    def __init__(self) -> None:
        self.states: Counter[JobState] = Counter()
        self.ended_on: dict[str, float] = {}  # agent id -> when its last attempt ended

    def reset(self) -> None:
        self.states.clear()
        self.ended_on.clear()

    def seen(self, before: Job | None, after: Job | None) -> None:
        if before is not None:
            self.states[before.state] -= 1
        if after is None:
            return
        self.states[after.state] += 1
        for attempt in after.attempts:
            if attempt.ended_at is not None and attempt.ended_at > self.ended_on.get(attempt.agent_id, 0.0):
                self.ended_on[attempt.agent_id] = attempt.ended_at

    def by_state(self) -> dict[str, int]:
        """Jobs per state (`incl status`), the states no job is in left out."""
        return {state.value: n for state, n in self.states.items() if n > 0}
