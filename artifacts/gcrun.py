"""One garbage collection of a store: list it, mark what the roots reach, plan (gc.py), delete, record candidates.

    report = await collect(store, read_roots, config=GcConfig(), dry_run=False)

The store is listed before the roots are read (`read_roots(now)`, from the job and study records): an object a
push writes after the listing is not in it, so it cannot be deleted, and a job submitted before the records are
read is among the roots.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import msgspec
import structlog

from incl.artifacts import gc, gcmarks
from incl.artifacts.batches import each, run_all
from incl.artifacts.config import GcConfig
from incl.artifacts.errors import InvalidManifest, NotFound
from incl.artifacts.gcroots import Roots
from incl.artifacts.manifest import Ref
from incl.artifacts.refs import read_manifest
from incl.artifacts.store import ArtifactStore, ObjectInfo

log = structlog.get_logger()


class Report(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    dry_run: bool
    deleted: dict[str, int]  # area (refs, manifests, packs, blobs) → objects deleted (or that would be)
    deleted_bytes: int
    candidates: int  # unreferenced objects recorded, to go once the grace period has passed
    live: int
    young: int
    missing: list[str]  # trees a root names that the store lacks (listed, at most 20)
    spared: int = 0  # doomed objects written again since the listing (a push reused them): kept
    seconds: float
    keys: list[str] = []  # the deleted keys, with `keys=True`


async def collect(store: ArtifactStore, read_roots: Callable[[float], Awaitable[Roots]], *,
                  config: GcConfig | None = None, dry_run: bool = False, now: float | None = None,
                  keys: bool = False) -> Report:
    started = time.monotonic()
    config = config or GcConfig()
    now = time.time() if now is None else now
    listing = [o for part in await run_all(store.list(area) for area in gc.AREAS) for o in part]
    roots = await read_roots(now)
    live, missing = await _mark(store, listing, roots, now, config)
    previous = await gcmarks.read(store)
    plan = gc.plan(listing, live, previous, now, config.grace)
    gone = plan.delete
    if not dry_run:
        gone = await _sweep(store, plan.delete, config)
        await gcmarks.write(store, plan.candidates)
    deleted: dict[str, int] = {}
    for o in gone:
        area = o.key.split("/", 1)[0]
        deleted[area] = deleted.get(area, 0) + 1
    report = Report(dry_run=dry_run, deleted=deleted, deleted_bytes=sum(o.size for o in gone),
                    spared=len(plan.delete) - len(gone), candidates=len(plan.candidates),
                    live=plan.live, young=plan.young, missing=sorted(missing)[:20],
                    seconds=round(time.monotonic() - started, 3), keys=[o.key for o in gone] if keys else [])
    log.info("store_collected", store=store.url, **msgspec.structs.asdict(report) | {"keys": len(report.keys)})
    return report


async def _sweep(store: ArtifactStore, doomed: list[ObjectInfo], config: GcConfig) -> list[ObjectInfo]:
    """Delete what the plan says, area by area, each object only if it is as the listing saw it: a push that
    uploaded a candidate again meanwhile (it never reuses one) keeps it. The objects deleted."""
    gone: set[str] = set()

    async def one(o: ObjectInfo) -> None:
        if await store.delete_unchanged(o):
            gone.add(o.key)

    await each(doomed, one, config.deletes)
    return [o for o in doomed if o.key in gone]


async def _mark(store: ArtifactStore, listing: list[ObjectInfo], roots: Roots, now: float,
                config: GcConfig) -> tuple[set[str], set[str]]:
    """Every key the roots reach, and the trees they name that the store lacks."""
    refs = gc.root_refs(listing, roots.jobs, now, config.grace)
    live = {o.key for o in refs}
    trees = roots.trees | set(gc.young_manifests(listing, now, config.grace))
    missing: set[str] = set()

    async def follow(ref: ObjectInfo) -> None:
        if (digest := await _target(store, ref.key)) is not None:
            trees.add(digest)

    await each(refs, follow, config.manifest_reads)

    async def reach(digest: str) -> None:
        try:
            _, manifest = await read_manifest(store, digest)
        except (NotFound, InvalidManifest):
            missing.add(digest)
            return
        live.update(gc.closure(manifest))

    await each(sorted(trees), reach, config.manifest_reads)
    live |= gc.manifest_keys(trees)
    return live, missing


async def _target(store: ArtifactStore, key: str) -> str | None:
    try:
        return msgspec.json.decode(await store.get_bytes(key), type=Ref).digest
    except (NotFound, msgspec.ValidationError):  # gone meanwhile, or not a ref: it keeps nothing else
        return None



