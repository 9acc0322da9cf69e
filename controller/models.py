"""The model registry: numbered, immutable versions made of a finished job's output blobs, and movable aliases.

    KV incl_models   <name>/v/<N>       ModelVersion, written once, with `create`
                     <name>/a/<alias>   ModelAlias, written again when the alias moves
    store            refs/models/<name>/<tree digest>   the version's tree: `incl gc` keeps every ref under
                                                         refs/models/, so registered files are never collected

Numbering is a compare-and-set on the bucket: the next number is the highest plus one, claimed by creating its
key, which the server refuses if it exists (two registrations at once: the loser takes the next number). Not the
store's conditional write: a file:// store has none, and S3's If-None-Match is not everywhere S3 is spoken (moto,
older MinIO); the bucket's `create` is atomic on the server, and the controller already writes every record that
way. The controller is the only writer.

The version's files are never copied: without `--path` its tree is the job's outputs tree itself; with it, a new
manifest that lists the chosen entries (artifacts/select.py) and names the same blobs and packs. That tree's ref is
written before the number is claimed, and named by its digest, so a registration that dies half way leaves at
worst a kept tree and never a version whose files may be collected.
"""

from __future__ import annotations

import builtins
import contextlib
import time
from collections.abc import Callable

import structlog

from incl.artifacts import errors as store_errors
from incl.artifacts import manifest as mf
from incl.artifacts.refs import manifest_key, read_manifest, write_ref
from incl.artifacts.select import select
from incl.artifacts.store import open_store
from incl.bus.connection import Bus
from incl.bus.kv import Bucket, KeyExists
from incl.bus.output import read_attempt
from incl.controller.lineage import final_metrics, lineage, outputs_of
from incl.controller.store import Records
from incl.proto import subjects
from incl.proto.codec import Decoder, encode
from incl.proto.errors import BadRequest, Conflict, DecodeError, InclError, NotFound
from incl.proto.messages import Job, MetricBatch, TreeRef
from incl.proto.registry import (
    MAX_NOTE,
    AliasModelReply,
    GetModelReply,
    ModelAlias,
    ModelRef,
    ModelSummary,
    ModelVersion,
    RegisterModelRequest,
    check_name,
)

log = structlog.get_logger()

CLAIM_ATTEMPTS = 20  # numbers tried before a registration gives up (each loss is another registration's win)
GC_REFS = "models"  # the store's refs/models/ (artifacts/gc.py MODEL_REFS: always roots)


def version_key(name: str, version: int) -> str:
    return f"{name}/v/{version}"


def alias_key(name: str, alias: str) -> str:
    return f"{name}/a/{alias}"


def versions_in(keys: list[str], name: str) -> list[int]:
    """The version numbers of `name` among the bucket's keys, in order."""
    prefix = f"{name}/v/"
    return sorted(int(k[len(prefix):]) for k in keys if k.startswith(prefix) and k[len(prefix):].isdigit())


def aliases_in(keys: list[str], name: str) -> list[str]:
    prefix = f"{name}/a/"
    return sorted(k[len(prefix):] for k in keys if k.startswith(prefix))


def known(keys: list[str], name: str) -> list[int]:
    """The versions of `name`; NotFound for a model never registered."""
    versions = versions_in(keys, name)
    if not versions:
        raise NotFound(f"no model named {name!r} (incl model ls lists them)")
    return versions


def names_in(keys: list[str]) -> list[str]:
    return sorted({k.split("/", 1)[0] for k in keys if "/v/" in k})


class Models:
    def __init__(self, bucket: Bucket, jobs: Records[Job], bus: Bus, store_url: str | None,
                 fence: Callable[[], None] = lambda: None, metric_poll: float = 0.2) -> None:
        self._kv = bucket
        self._jobs = jobs
        self._bus = bus
        self._store_url = store_url
        self._fence = fence  # raises when this controller may no longer write (a deposed leader)
        self._metric_poll = metric_poll
        self._versions: Decoder[ModelVersion] = Decoder(ModelVersion)
        self._aliases: Decoder[ModelAlias] = Decoder(ModelAlias)

    # --- writes -------------------------------------------------------------------------------------------

    async def register(self, req: RegisterModelRequest, caller: str) -> ModelVersion:
        """Check everything first (name, alias, note, job, paths), then write: nothing is registered on bad input."""
        name = check_name(req.name)
        if req.alias is not None:
            check_name(req.alias, "alias")
        if req.note is not None and len(req.note) > MAX_NOTE:
            raise BadRequest(f"the note is {len(req.note)} characters; at most {MAX_NOTE}")
        job = await self._jobs.need(req.job_id, "job")
        attempt, outputs = outputs_of(job)
        tree = await self._store_tree(name, job.id, outputs, req.paths)
        metrics = await self._final_metrics(job)
        for _ in range(CLAIM_ATTEMPTS):
            number = max(versions_in(await self._kv.keys(), name), default=0) + 1
            version = ModelVersion(name=name, version=number, tree=tree, paths=list(req.paths),
                                   lineage=lineage(job, attempt, metrics), registered_by=caller,
                                   registered_at=time.time(), note=req.note)
            self._fence()
            try:
                await self._kv.create(version_key(name, number), encode(version))
            except KeyExists:
                log.info("model_version_taken", model=name, version=number)
                continue
            log.info("model_registered", model=name, version=number, job_id=job.id, by=caller)
            if req.alias is not None:
                await self.alias(name, number, req.alias, caller)
            return version
        raise Conflict(f"model {name!r}: {CLAIM_ATTEMPTS} version numbers were taken while registering; try again")

    async def _store_tree(self, name: str, job_id: str, outputs: TreeRef, paths: list[str]) -> TreeRef:
        """The version's tree, stored with its ref under refs/models/ (see the module docstring)."""
        if self._store_url is None:
            raise InclError("the controller names no artifact store (its `store_url` is empty)")
        async with open_store(self._store_url) as store:
            digest, manifest = await read_manifest(store, outputs.digest)
            if paths:
                try:
                    manifest = select(manifest, paths)
                except store_errors.NotFound as exc:
                    have = ", ".join(e.path for e in manifest.files[:5]) + (", ..." if len(manifest.files) > 5
                                                                            else "")
                    raise NotFound(f"{exc.path!r} is not among the outputs of job {job_id} (it has: {have})",
                                   field="path") from None
                data, digest = mf.encode(manifest)
                await store.put_bytes(manifest_key(digest), data)
            self._fence()
            # One ref per tree, not per version: versions of the same files share it.
            await write_ref(store, f"{GC_REFS}/{name}/{digest}", digest)
        return TreeRef(digest=digest, files=len(manifest.files), bytes=manifest.total_bytes)

    async def alias(self, name: str, version: int, alias: str, caller: str) -> AliasModelReply:
        check_name(name)
        check_name(alias, "alias")
        known(await self._kv.keys(), name)
        await self._version(name, version)  # NotFound for a version that does not exist
        previous = await self._alias(name, alias)
        record = ModelAlias(name=name, alias=alias, version=version, set_by=caller, set_at=time.time())
        self._fence()
        await self._kv.put(alias_key(name, alias), encode(record))
        log.info("model_alias_set", model=name, alias=alias, version=version, by=caller)
        return AliasModelReply(alias=record, previous=previous.version if previous else None)

    # --- reads --------------------------------------------------------------------------------------------

    async def list(self) -> list[ModelSummary]:
        keys = await self._kv.keys()
        out = []
        for name in names_in(keys):
            versions = versions_in(keys, name)
            aliases = {a: r.version for a in aliases_in(keys, name) if (r := await self._alias(name, a))}
            out.append(ModelSummary(name=name, versions=len(versions), latest=await self._version(name, versions[-1]),
                                    aliases=aliases))
        return out

    async def versions(self, name: str | None = None, job_id: str | None = None) -> builtins.list[ModelVersion]:
        """Every version of `name` (NotFound if it has none), or of every model; only those made from `job_id`
        if given. Reads each version's record: the bucket's keys do not say which job made it."""
        keys = await self._kv.keys()
        if name is not None:
            check_name(name)
            names = [name] if known(keys, name) else []
        else:
            names = names_in(keys)
        found = [await self._version(n, v) for n in names for v in versions_in(keys, n)]
        return [v for v in found if job_id is None or v.lineage.job_id == job_id]

    async def get(self, ref: ModelRef) -> GetModelReply:
        check_name(ref.name)
        keys = await self._kv.keys()
        versions = known(keys, ref.name)
        aliases = {a: r.version for a in aliases_in(keys, ref.name) if (r := await self._alias(ref.name, a))}
        number = versions[-1]
        if ref.version is not None:
            number = ref.version
        elif ref.alias is not None:
            if ref.alias not in aliases:
                raise NotFound(f"model {ref.name!r} has no alias {ref.alias!r}"
                               + (f" (it has: {', '.join(sorted(aliases))})" if aliases else ""))
            number = aliases[ref.alias]
        return GetModelReply(version=await self._version(ref.name, number), versions=versions, aliases=aliases)

    async def _version(self, name: str, version: int) -> ModelVersion:
        entry = await self._kv.get(version_key(name, version))
        if entry is None:
            raise NotFound(f"model {name!r} has no version v{version}")
        return self._versions.decode(entry[0])

    async def _alias(self, name: str, alias: str) -> ModelAlias | None:
        entry = await self._kv.get(alias_key(name, alias))
        return self._aliases.decode(entry[0]) if entry else None

    async def _final_metrics(self, job: Job) -> dict[str, float]:
        """The last value of each metric the job logged, read in order batch by batch (an attempt's exit event
        comes after its metrics, so an ended job's are all in the stream)."""
        last: dict[str, float] = {}
        decoder: Decoder[MetricBatch] = Decoder(MetricBatch)
        for attempt in job.attempts:  # each attempt's own subjects, in order (its assigned agents' batches only)
            async with contextlib.aclosing(read_attempt(self._bus, subjects.METRICS_STREAM, job, attempt,
                                                        self._metric_poll)) as items:
                async for data in items:
                    with contextlib.suppress(DecodeError):
                        last = final_metrics([decoder.decode(data)], last)
        return last

