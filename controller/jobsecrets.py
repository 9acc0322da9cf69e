"""A job's secret values: locked in its record, sealed in its assignments, clear only in between, in memory.

In the record, `spec.secrets` keeps the names with empty values and `Job.locked_secrets` the values encrypted
with the controller's vault key, so the jobs bucket (and any backup of it) holds no clear value. A record an older
controller wrote (values in the spec, nothing locked) is read as it is and locked at its next write.

In an assignment the values are sealed to the public key of the agent that runs it, which alone can open them:
the assignment stream holds no clear value either. An agent that sent no key (an older agent) is given no job
that has secrets: handing it the values in clear would undo the rest.
"""

from __future__ import annotations

from msgspec import structs

from incl.auth.sealing import Vault, seal
from incl.proto.messages import Job
from incl.proto.spec import JobSpec


class NoSealKey(Exception):
    """The agent has no key to seal secrets to; the message is the reason the job waits."""


def locked(job: Job, vault: Vault) -> Job:
    """The job as it is stored: its secret values moved from the spec into `locked_secrets`, encrypted (the same
    object when there is nothing to lock)."""
    if job.locked_secrets is not None or not job.spec.secrets:
        return job
    return structs.replace(job, spec=_names_only(job.spec),
                           locked_secrets={name: vault.lock(value) for name, value in job.spec.secrets.items()})


def values(job: Job, vault: Vault) -> dict[str, str]:
    """The job's secrets in clear (raises SealError when they were locked with another key)."""
    if job.locked_secrets is None:
        return dict(job.spec.secrets)  # an old record, not yet locked
    return {name: vault.unlock(data) for name, data in job.locked_secrets.items()}


def lock_spec(spec: JobSpec, vault: Vault) -> tuple[JobSpec, dict[str, bytes] | None]:
    """A spec as a record other than a job's keeps it (a study's): names only, and the values locked."""
    if not spec.secrets:
        return spec, None
    return _names_only(spec), {name: vault.lock(value) for name, value in spec.secrets.items()}


def unlocked_spec(spec: JobSpec, locked: dict[str, bytes] | None, vault: Vault) -> JobSpec:
    """The spec with its secret values back, in memory (a record from before locking has them already)."""
    if locked is None:
        return spec
    return structs.replace(spec, secrets={name: vault.unlock(data) for name, data in locked.items()})


def sealed_for(job: Job, vault: Vault, agent_id: str, key: bytes | None) -> tuple[JobSpec, dict[str, bytes] | None]:
    """The spec an assignment carries (names only) and the values sealed to the agent's `key`."""
    if not job.spec.secrets:
        return job.spec, None
    if key is None:
        raise NoSealKey(refusal(agent_id))
    return _names_only(job.spec), {name: seal(key, value) for name, value in values(job, vault).items()}


def refusal(agent_id: str) -> str:
    return (f"waiting for an agent that can receive secrets: agent {agent_id} sent no key to seal them to "
            "(an older agent; upgrade it)")


def _names_only(spec: JobSpec) -> JobSpec:
    return structs.replace(spec, secrets=dict.fromkeys(spec.secrets, ""))
