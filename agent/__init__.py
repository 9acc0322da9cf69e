"""The INCL agent: registers, heartbeats, runs assigned jobs, ships their logs and metrics."""
