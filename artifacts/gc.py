"""Garbage collection of the artifact store, as pure functions: what is live, and what to delete.

Mark and sweep with a grace period, so that a push running at the same time loses nothing:

    live        the closure of the roots: refs of jobs and studies still kept, registered models (refs/models/),
                every ref or manifest younger than the grace period, and what each of those points at
    young       an object written less than `grace` ago is never a candidate: a push in progress uploads its
                blobs before the manifest that names them, and its job record comes after both
    candidate   an object neither live nor young, recorded with the time it was first seen so (in the store,
                gc/candidates, so that every run of `incl gc` from anywhere shares them: gcmarks.py)
    deleted     a candidate first seen at least `grace` ago, not written since, and still not live now; and not
                written since this run listed it (the store re-checks as it deletes: delete_unchanged)

An object written again after it became a candidate (a push that uploaded it anew) starts over. A push never
reuses a candidate: it uploads it again (push.py), which is what closes the race with a sweep. Deletions go
refs first, then manifests, then blobs and packs: a stored manifest keeps implying that its blobs are there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

from incl.artifacts import manifest as mf
from incl.artifacts.refs import blob_key, manifest_key, pack_key
from incl.artifacts.store import ObjectInfo

AREAS = ("refs/", "manifests/", "packs/", "blobs/")  # what gc looks after, in the order it deletes
MODEL_REFS = "refs/models/"  # the model registry's refs: always roots (the hook for registered models)


class Plan(NamedTuple):
    delete: list[ObjectInfo]  # in deletion order (AREAS)
    candidates: dict[str, float]  # key → when first seen unreferenced, for the next run
    live: int  # objects kept because something references them
    young: int  # objects kept because they were written less than `grace` ago

    @property
    def bytes(self) -> int:
        return sum(o.size for o in self.delete)


def closure(manifest: mf.Manifest) -> set[str]:
    """The store keys a tree needs besides its manifest: its blobs and packs."""
    return {blob_key(e.digest) for e in manifest.files if e.pack < 0} | {pack_key(p) for p in manifest.pack_ids}


def ref_job(key: str) -> str | None:
    """The job a ref belongs to (refs/jobs/<job>/...), else None."""
    parts = key.split("/")
    return parts[2] if len(parts) > 3 and parts[:2] == ["refs", "jobs"] else None


def root_refs(listing: Iterable[ObjectInfo], kept_jobs: set[str], now: float, grace: float) -> list[ObjectInfo]:
    """Refs that are roots: a kept job's, a registered model's, or any written less than `grace` ago."""
    return [o for o in listing if o.key.startswith("refs/")
            and (ref_job(o.key) in kept_jobs or o.key.startswith(MODEL_REFS) or o.mtime > now - grace)]


def young_manifests(listing: Iterable[ObjectInfo], now: float, grace: float) -> list[str]:
    """Digests of manifests written less than `grace` ago: a push's tree before its job record names it."""
    return [o.key.removeprefix("manifests/") for o in listing
            if o.key.startswith("manifests/") and o.mtime > now - grace]


def plan(listing: Iterable[ObjectInfo], live: set[str], previous: Mapping[str, float], now: float,
         grace: float) -> Plan:
    """What to delete, and the candidates to record. `live`: every key the roots reach (refs, manifests, blobs,
    packs); `previous`: the candidates the last run recorded."""
    delete: list[ObjectInfo] = []
    candidates: dict[str, float] = {}
    n_live = n_young = 0
    for o in listing:
        if o.key in live:
            n_live += 1
        elif o.mtime > now - grace:
            n_young += 1
        else:
            seen = previous.get(o.key)
            if seen is None or o.mtime > seen:  # new, or written again since it was marked: start over
                seen = now
            if now - seen >= grace:
                delete.append(o)
            else:
                candidates[o.key] = seen
    order = {area: n for n, area in enumerate(AREAS)}
    delete.sort(key=lambda o: (order.get(o.key[:o.key.find("/") + 1], len(AREAS)), o.key))
    return Plan(delete, candidates, n_live, n_young)


def manifest_keys(digests: Iterable[str]) -> set[str]:
    return {manifest_key(d) for d in digests}
