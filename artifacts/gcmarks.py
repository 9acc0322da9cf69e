"""The collector's marks, kept in the store itself (gc/candidates): each unreferenced object and when a collection
first found it so. `incl gc` writes them at the end of every run; a push reads them.

Only a marked object can be deleted, and only by a later run, once it has been marked for the grace period. So a
push that reads the marks before it asks the store what it holds, and uploads again whatever marked object it would
otherwise reuse, relies on nothing a running sweep may delete: a freshly written object is spared by the sweep's
re-check (ArtifactStore.delete_unchanged), and an object deleted before the push asked is simply missing to it.
"""

from __future__ import annotations

import msgspec
import structlog

from incl.artifacts.errors import NotFound
from incl.artifacts.store import ArtifactStore

log = structlog.get_logger()

KEY = "gc/candidates"


class _Candidates(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    first_seen: dict[str, float]  # key → when gc first found it unreferenced


async def read(store: ArtifactStore) -> dict[str, float]:
    """The marked keys; empty when no collection ran. Unreadable marks read as none: a collection that cannot
    read them deletes nothing either (it starts over)."""
    try:
        data = await store.get_bytes(KEY)
    except NotFound:
        return {}
    try:
        return msgspec.json.decode(data, type=_Candidates).first_seen
    except msgspec.ValidationError:
        log.warning("gc_candidates_unreadable", store=store.url)
        return {}


async def write(store: ArtifactStore, first_seen: dict[str, float]) -> None:
    await store.put_bytes(KEY, msgspec.json.encode(_Candidates(first_seen)))
