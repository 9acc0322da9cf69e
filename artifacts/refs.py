"""Where trees live in the store, and the named refs that point at them.

    blobs/<first 2 hex>/<sha256>     file contents
    packs/<first 2 hex>/<id>         many small files' contents, concatenated (see packs.py)
    manifests/<sha256>               a tree (see manifest.py); written after all its blobs
    refs/<name>                      {"digest": ...}: e.g. refs/jobs/<job>/outputs/<attempt>

A manifest in the store implies that every blob it lists is there too: push_tree uploads it last.
"""

from __future__ import annotations

import asyncio
import re

import msgspec

from incl.artifacts import manifest as mf
from incl.artifacts.errors import InvalidManifest, NotFound
from incl.artifacts.store import ArtifactStore

DIGEST = re.compile(r"[0-9a-f]{64}")
_REF_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def blob_key(digest: str) -> str:
    return f"blobs/{digest[:2]}/{digest}"


def pack_key(pack: str) -> str:
    return f"packs/{pack[:2]}/{pack}"


def manifest_key(digest: str) -> str:
    return f"manifests/{digest}"


def ref_key(name: str) -> str:
    if not all(_REF_PART.fullmatch(part) for part in name.split("/")):
        raise InvalidManifest(f"invalid ref name {name!r}: use parts of letters, digits, '.', '_', '-' "
                              "joined by '/'", path=name)
    return f"refs/{name}"


async def resolve_ref(store: ArtifactStore, ref: str) -> str | None:
    """The digest the ref points at; None when there is no such ref."""
    try:
        data = await store.get_bytes(ref_key(ref))
    except NotFound:
        return None
    try:
        return msgspec.json.decode(data, type=mf.Ref).digest
    except msgspec.ValidationError as exc:
        raise InvalidManifest(f"ref {ref} is malformed: {exc}", path=ref) from None


async def write_ref(store: ArtifactStore, ref: str, digest: str) -> None:
    await store.put_bytes(ref_key(ref), msgspec.json.encode(mf.Ref(digest=digest)))


async def resolve(store: ArtifactStore, tree: str) -> str:
    """A tree named by its digest (64 hex digits) or by a ref; NotFound for a ref that does not exist."""
    if DIGEST.fullmatch(tree):
        return tree
    digest = await resolve_ref(store, tree)
    if digest is None:
        raise NotFound(f"{store.url}: no ref {tree}", path=tree)
    return digest


async def read_manifest(store: ArtifactStore, tree: str) -> tuple[str, mf.Manifest]:
    """The tree's digest and manifest, checked (see manifest.decode)."""
    digest = await resolve(store, tree)
    data = await store.get_bytes(manifest_key(digest))
    # A 100,000-file manifest takes a few hundred ms to decode and check: not on the event loop.
    return digest, await asyncio.to_thread(mf.decode, data, digest)
