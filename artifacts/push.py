"""push_tree: a local folder into the store as content-addressed blobs plus a manifest, sending only what the
store lacks.

    walk (snapshot.py) → hash what the hash cache does not know, each file from one open file (reading.py)
    → group small files into packs if there are thousands (packs.py) → manifest → if the store is known or
    found to hold the manifest, stop → read what garbage collection marked (gcmarks.py) → find the blobs and
    packs the store lacks → upload them, and the marked ones it holds (small files' bytes as they were read;
    big files read again from the same open file, checked against their hash) → upload the manifest → check
    that the marked ones are still there (else upload them again) → move the ref

The snapshot holds each file as its one open file read it: a file replaced by rename meanwhile goes up as the
version that was hashed. A file that keeps changing in place refuses the push (FileChanged), or, with
`unsettled="keep_previous"` (periodic checkpoint syncs), keeps the version the ref's previous tree holds for
this round (a file of its own there; a file new since, or packed there, is left out) and is taken next round.

Which blobs does the store lack? Measured against moto, 5,000 files (bench/results/code_sync_strategies.*):
one LIST of 5,000 blob keys took 2.5 s where 5,000 HEADs took 20 s; into an empty store, HEAD-then-PUT took
35 s and PUT-unasked 24 s; into a store that held the blobs, PUTting them again took 25 s. So: list the
store's first pages of blobs (enough to settle everything in a small store, a sample in a big one: 2.5 s in
that last case), then HEAD the rest if the sample says they are mostly there, else PUT the small ones unasked
(content addressing makes a second PUT harmless) and HEAD only the big ones (see _missing).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import msgspec
import structlog

from incl.artifacts import gcmarks
from incl.artifacts import manifest as mf
from incl.artifacts import packs as pk
from incl.artifacts.batches import each, in_threads, run_all
from incl.artifacts.config import TreeLimits
from incl.artifacts.errors import FileChanged, NotFound, UnreadableFile
from incl.artifacts.hashcache import HashCache
from incl.artifacts.reading import read_settled, source
from incl.artifacts.refs import blob_key, manifest_key, pack_key, read_manifest, write_ref
from incl.artifacts.snapshot import Found, StatKey, walk_tree
from incl.artifacts.store import ArtifactStore

log = structlog.get_logger()

Progress = Callable[[int, int], None]  # (bytes uploaded so far, bytes to upload)
# ("scanning", entries found so far, 0), then ("hashing", files hashed so far, files to hash). Called from
# worker threads: it must be quick and thread-safe.
Phase = Callable[[str, int, int], None]
LIST_PAGE = 1000  # S3's largest LIST page
_PAST_ALL = "g"  # sorts after every hex digest


class PushResult(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    digest: str  # the manifest's SHA-256: the tree's id
    files: int
    bytes: int
    hashed_files: int  # files read to hash them (the rest came from the hash cache)
    uploaded_blobs: int  # objects PUT: blobs, and packs of many small files (packs.py)
    uploaded_bytes: int
    packs: int = 0  # packs the tree's small files are in


class _Sent:
    def __init__(self) -> None:
        self.blobs = self.bytes = 0
        self.seen: set[str] = set()  # digests the store was seen to hold during this push
        self.uploaded: set[str] = set()  # those this push uploaded


class _Held:
    """Files held open from hashing to upload, by path relative to the root: at most TreeLimits.open_files, the
    rest closed at once (their upload opens the path again, and a file replaced meanwhile refuses the push)."""

    def __init__(self, limit: int) -> None:
        self.fds: dict[str, int] = {}
        self._limit = limit
        self._lock = threading.Lock()  # hashing threads add to it

    def keep(self, rel: str, fd: int) -> None:
        with self._lock:
            if len(self.fds) < self._limit:
                self.fds[rel] = fd
                return
        os.close(fd)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


async def push_tree(store: ArtifactStore, root: Path, *, gitignore: bool = False, exclude: Sequence[str] = (),
                    ref: str | None = None, hash_cache: HashCache | None = None, progress: Progress | None = None,
                    phase: Phase | None = None, limits: TreeLimits = TreeLimits(),
                    unsettled: Literal["refuse", "keep_previous"] = "refuse") -> PushResult:
    """Snapshot `root` into `store`; with `ref`, point that ref at it. See the module docstring."""
    real_root = os.path.realpath(root)  # noqa: ASYNC240 - resolves a local path once, before the threads start
    walked_at = time.time_ns()
    scanned = None if phase is None else (lambda n: phase("scanning", n, 0))
    found, (cached, known) = await asyncio.gather(  # two threads: the walk, and the local records
        asyncio.to_thread(walk_tree, Path(root), gitignore=gitignore, exclude=exclude, max_bytes=limits.max_bytes,
                          biggest_shown=limits.biggest_shown, scanned=scanned),
        asyncio.to_thread(_recall, hash_cache, real_root, store.identity, limits))
    contents: dict[str, bytes] = {}
    held, sent = _Held(limits.open_files), _Sent()
    carried: list[mf.Entry] = []
    hashed: dict[str, str] = {}
    done = False
    try:
        found, digests, hashed, changing = await _hash(real_root, found, cached, phase, contents, held, limits,
                                                       unsettled == "refuse")
        if changing:
            carried = await _carry(store, ref, changing)
            log.warning("files_unsettled", root=str(root), ref=ref, files=changing[:10], count=len(changing),
                        kept_previous=len(carried))
        data, digest, packs = await asyncio.to_thread(_manifest, found, digests, carried, limits)
        if digest not in known:
            await _send(store, real_root, found, digests, digest, data, packs, contents, held, known, sent, progress,
                        limits)
        sent.seen.add(digest)
        done = True
        if ref is not None:
            await write_ref(store, ref, digest)
    finally:
        held.close()
        if hash_cache is not None:
            # What the store was seen to hold is safe to trust later only once a manifest names it (gcmarks.py);
            # a push that failed before that remembers only what it uploaded itself.
            await asyncio.to_thread(_remember, hash_cache, real_root, found, cached, hashed, store.identity,
                                    sent.seen if done else sent.uploaded, walked_at - int(limits.racy_window * 1e9))
    files = [f for f in found if f.kind == "file"]
    result = PushResult(digest=digest, files=len(files) + len(carried),
                        bytes=sum(f.stat.size for f in files) + sum(e.size for e in carried),
                        hashed_files=len(hashed), uploaded_blobs=sent.blobs, uploaded_bytes=sent.bytes,
                        packs=len(packs))
    log.info("tree_pushed", root=str(root), store=store.url, ref=ref, **msgspec.structs.asdict(result))
    return result


def _recall(cache: HashCache | None, real_root: str, store: str,
            limits: TreeLimits) -> tuple[dict[str, tuple[StatKey, str]], set[str]]:
    if cache is None:
        return {}, set()
    return cache.digests(real_root), cache.known(store, limits.known_ttl)


def _remember(cache: HashCache, real_root: str, found: list[Found], cached: dict[str, tuple[StatKey, str]],
              hashed: dict[str, str], store: str, seen: set[str], recent: int) -> None:
    """Store new digests, except of files modified after `recent` (ns): so close to the walk that a change
    right after it could leave the same mtime; forget files that are gone or changed."""
    by_rel = {f.rel: f for f in found}
    put = [(f"{real_root}/{rel}", by_rel[rel].stat, d) for rel, d in hashed.items()
           if by_rel[rel].stat.mtime_ns < recent]
    kept = {f"{real_root}/{f.rel}" for f in found if f.kind == "file" and f.rel not in hashed}
    cache.update(put=put, drop=[p for p in cached if p not in kept], store=store, seen=seen)


async def _hash(real_root: str, found: list[Found], cached: dict[str, tuple[StatKey, str]], phase: Phase | None,
                contents: dict[str, bytes], held: _Held, limits: TreeLimits,
                refuse: bool) -> tuple[list[Found], dict[str, str], dict[str, str], list[str]]:
    """The tree as read: its entries (each file's stat the one its open file had while it was read; files deleted
    since the walk left out), every file's digest, those of the files that had to be read for it, and the files
    that kept changing (left out; with `refuse`, FileChanged instead). Small files' bytes are kept in `contents`
    (digest → bytes, up to TreeLimits.pack_keep_bytes in all); big files stay open in `held` for the upload."""
    digests: dict[str, str] = {}
    todo: list[Found] = []
    for f in found:
        if f.kind == "file":
            hit = cached.get(f"{real_root}/{f.rel}")
            if hit is not None and hit[0] == f.stat:
                digests[f.rel] = hit[1]
            else:
                todo.append(f)
    done = 0
    kept = 0
    settled: dict[str, StatKey] = {}
    changing: list[str] = []

    def hash_one(f: Found) -> str:
        nonlocal kept
        try:
            got = read_settled(os.path.join(real_root, f.rel), keep_max=limits.pack_file_max, settle=not refuse,
                               limits=limits)
        except FileChanged:
            if refuse:
                raise
            changing.append(f.rel)
            return ""
        if got is None:  # deleted since the walk
            return ""
        settled[f.rel] = got.stat
        if got.data is not None and kept + len(got.data) <= limits.pack_keep_bytes:
            contents[got.digest] = got.data  # a pack or a blob built from these reads no file again
            kept += len(got.data)
            os.close(got.fd)
        else:
            held.keep(f.rel, got.fd)
        return got.digest

    def batch_of(batch: list[Found]) -> list[str]:
        nonlocal done
        out = [hash_one(f) for f in batch]
        done += len(batch)  # under the GIL; only a progress figure
        if phase is not None:
            phase("hashing", done, len(todo))
        return out

    computed = await in_threads(todo, lambda f: f.stat.size, batch_of, limits)
    hashed = {f.rel: d for f, d in zip(todo, computed, strict=True) if d}
    read = [f if f.kind != "file" or f.rel not in settled else f._replace(stat=settled[f.rel]) for f in found
            if f.kind != "file" or f.rel in digests or f.rel in hashed]
    return read, digests | hashed, hashed, sorted(changing)


async def _carry(store: ArtifactStore, ref: str | None, rels: list[str]) -> list[mf.Entry]:
    """The entries of the ref's previous tree for files that kept changing, where each is a blob of its own there
    (so the store holds it): such a file keeps its last stored version for this round."""
    if ref is None:
        return []
    try:
        _, previous = await read_manifest(store, ref)
    except NotFound:
        return []
    wanted = set(rels)
    return [e for e in previous.files if e.path in wanted and e.pack == -1]


def _manifest(found: list[Found], digests: dict[str, str], carried: list[mf.Entry],
              limits: TreeLimits) -> tuple[bytes, str, list[pk.Pack]]:
    """The manifest's bytes and id, and the packs it uses (blocking: a few hundred ms for 100,000 files)."""
    packs = pk.plan({digests[f.rel]: f.stat.size for f in found if f.kind == "file"}, limits)
    where = {d: (n, at) for n, p in enumerate(packs) for d, at in p.offsets().items()}
    data, digest = mf.encode(mf.build(_entries(found, digests, where) + carried, [p.id for p in packs]))
    return data, digest, packs


def _entries(found: list[Found], digests: dict[str, str], where: dict[str, tuple[int, int]]) -> list[mf.Entry]:
    out = []
    for f in found:
        if f.kind == "file":
            d = digests[f.rel]
            pack, offset = where.get(d, (-1, 0))
            out.append(mf.Entry(path=f.rel, kind="file", mode=f.mode, size=f.stat.size, digest=d, pack=pack,
                                offset=offset))
        elif f.kind == "dir":
            out.append(mf.Entry(path=f.rel, kind="dir", mode=f.mode))
        else:
            out.append(mf.Entry(path=f.rel, kind="symlink", target=f.target))
    return out


async def _send(store: ArtifactStore, real_root: str, found: list[Found], digests: dict[str, str], digest: str,
                data: bytes, packs: list[pk.Pack], contents: dict[str, bytes], held: _Held, known: set[str],
                sent: _Sent, progress: Progress | None, limits: TreeLimits) -> None:
    """Upload the blobs and packs the store lacks, then the manifest (unless the store holds the tree already).

    What a collection marked for deletion (gcmarks.py) is never reused: it goes up again, so that a sweep running
    now spares it (it deletes only what is as it listed it), and is looked for once more after the manifest is
    written: a sweep that deleted it in between (S3 has no conditional delete) has it uploaded a third time."""
    blobs: dict[str, Found] = {}
    for f in found:
        if f.kind == "file":
            blobs.setdefault(digests[f.rel], f)
    packed = {m.digest for p in packs for m in p.members}
    unknown = {d: f for d, f in blobs.items() if d not in known and d not in packed}
    unknown_packs = [p for p in packs if p.id not in known]
    if not unknown and not unknown_packs:
        await store.put_bytes(manifest_key(digest), data)
        return
    # Pushed before, from here or elsewhere? Then its blobs are there. Worth a request only when it could
    # save more than a few small PUTs (else every unknown blob is PUT unasked: nothing stored is relied on).
    worth_asking = unknown_packs or len(unknown) >= limits.blobs_per_list_page or any(
        f.stat.size > limits.blind_put_max for f in unknown.values())
    # Read before the store is asked anything: what it holds then and is not marked cannot go before the next
    # collection marks it, a grace period earlier than it deletes it.
    marked = await gcmarks.read(store) if worth_asking else {}
    if worth_asking and manifest_key(digest) not in marked and await store.exists(manifest_key(digest)):
        sent.seen |= blobs.keys() - packed
        sent.seen |= {p.id for p in packs}
        return
    missing = await _missing(store, unknown, sent, limits)
    missing_packs = await _missing_packs(store, unknown_packs, sent, limits)
    again = {d: f for d, f in unknown.items() if d not in missing and blob_key(d) in marked}
    lacking = {p.id for p in missing_packs}
    again_packs = [p for p in unknown_packs if p.id not in lacking and pack_key(p.id) in marked]
    missing |= again
    missing_packs += again_packs
    total = sum(f.stat.size for f in missing.values()) + sum(p.size for p in missing_packs)
    if progress is not None:
        progress(0, total)

    def reread(d: str) -> tuple[str, bytes]:
        path = Path(real_root, blobs[d].rel)
        try:
            with source(path, held.fds.get(blobs[d].rel)) as f:
                return str(path), f.read()
        except FileNotFoundError:
            raise FileChanged(f"{path} was deleted while it was uploaded", path=str(path)) from None

    async def upload(blobs: dict[str, Found], packs: list[pk.Pack]) -> None:
        await run_all([
            each(packs, lambda p: _put_pack(store, p, contents, reread, sent, progress, total), limits.io_workers),
            each(blobs.items(), lambda item: _put_blob(store, Path(real_root, item[1].rel), item[0],
                                                       item[1].stat.size, contents.get(item[0]),
                                                       held.fds.get(item[1].rel), sent, progress, total),
                 limits.transfers)])

    await upload(missing, missing_packs)
    await store.put_bytes(manifest_key(digest), data)  # last: a stored manifest implies its blobs
    if again or again_packs:
        lost = await _lost(store, again, again_packs, limits)
        if lost[0] or lost[1]:
            log.warning("tree_objects_collected_meanwhile", digest=digest, blobs=len(lost[0]), packs=len(lost[1]))
            await upload(*lost)


async def _lost(store: ArtifactStore, blobs: dict[str, Found], packs: list[pk.Pack],
                limits: TreeLimits) -> tuple[dict[str, Found], list[pk.Pack]]:
    """Which of these uploaded objects the store no longer holds."""
    there: dict[str, bool] = {}

    async def ask(key: str) -> None:
        there[key] = await store.exists(key)

    await each([blob_key(d) for d in blobs] + [pack_key(p.id) for p in packs], ask, limits.transfers)
    return ({d: f for d, f in blobs.items() if not there[blob_key(d)]},
            [p for p in packs if not there[pack_key(p.id)]])


async def _missing_packs(store: ArtifactStore, unknown: list[pk.Pack], sent: _Sent,
                         limits: TreeLimits) -> list[pk.Pack]:
    """The packs the store lacks: a HEAD each (a tree has a few, each standing for thousands of files)."""
    there: dict[str, bool] = {}

    async def ask(p: pk.Pack) -> None:
        there[p.id] = await store.exists(pack_key(p.id))

    await each(unknown, ask, limits.transfers)
    sent.seen |= {p for p, held in there.items() if held}
    return [p for p in unknown if not there[p.id]]


async def _put_pack(store: ArtifactStore, pack: pk.Pack, contents: dict[str, bytes],
                    reread: Callable[[str], tuple[str, bytes]], sent: _Sent, progress: Progress | None,
                    total: int) -> None:
    data = await asyncio.to_thread(pk.build, pack, contents, reread)
    await store.put_bytes(pack_key(pack.id), data)
    sent.seen.add(pack.id)
    sent.uploaded.add(pack.id)
    sent.blobs += 1
    sent.bytes += len(data)
    if progress is not None:
        progress(sent.bytes, total)


async def _missing(store: ArtifactStore, unknown: dict[str, Found], sent: _Sent,
                   limits: TreeLimits) -> dict[str, Found]:
    """The unknown blobs the store lacks. Blob keys sort by digest, so listing the first pages of blobs/
    settles every unknown digest up to the last key listed: all of them when the store is small, else a
    uniform sample that says whether the rest are mostly there (HEAD them) or mostly not (PUT them unasked)."""
    held: set[str] = set()
    settled_up_to = ""
    if pages := len(unknown) // limits.blobs_per_list_page:
        listing = await store.list("blobs/", limit=pages * LIST_PAGE)
        held = {info.key.rsplit("/", 1)[-1] for info in listing} & unknown.keys()
        settled_up_to = _PAST_ALL if len(listing) < pages * LIST_PAGE else listing[-1].key.rsplit("/", 1)[-1]
    settled = sum(1 for d in unknown if d <= settled_up_to)
    mostly_there = settled > 0 and len(held) * 2 >= settled
    ask = [d for d, f in unknown.items()
           if d > settled_up_to and (mostly_there or f.stat.size > limits.blind_put_max)]
    answers: dict[str, bool] = {}

    async def head(d: str) -> None:
        answers[d] = await store.exists(blob_key(d))

    await each(ask, head, limits.transfers)
    held |= {d for d, there in answers.items() if there}
    sent.seen |= held
    return {d: f for d, f in unknown.items() if d not in held}


async def _put_blob(store: ArtifactStore, path: Path, digest: str, size: int, data: bytes | None, fd: int | None,
                    sent: _Sent, progress: Progress | None, total: int) -> None:
    """The bytes kept from hashing, else the open file that was hashed (else the path: a file the hash cache
    knew), checked against the digest as they are read."""
    try:
        if data is not None:
            await store.put_bytes(blob_key(digest), data)
        else:
            await store.put_file(blob_key(digest), path, sha256=digest, fd=fd)
    except FileNotFoundError:
        raise FileChanged(f"{path} was deleted while it was uploaded", path=str(path)) from None
    except PermissionError as exc:
        raise UnreadableFile(f"{path}: cannot read it ({exc.strerror})", path=str(path)) from None
    sent.seen.add(digest)
    sent.uploaded.add(digest)
    sent.blobs += 1
    sent.bytes += size
    if progress is not None:
        progress(sent.bytes, total)
