"""The INCL controller: job store and state machine, scheduler, liveness, API."""
