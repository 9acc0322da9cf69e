"""Part of a tree as a tree of its own, sharing the same blobs and packs: what a model version made of one file
(or one folder) of a job's outputs is, without copying a byte.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable

import msgspec

from incl.artifacts import manifest as mf
from incl.artifacts.errors import NotFound


def _chosen(entries: list[mf.Entry], path: str) -> list[mf.Entry]:
    """The entries `path` names: the file or symlink itself, or a folder with everything under it."""
    clean = posixpath.normpath(path.strip("/")) if path.strip("/") else ""
    if not clean or clean == "." or clean.startswith(".."):
        return []
    inside = clean + "/"
    return [e for e in entries if e.path == clean or e.path.startswith(inside)]


def select(manifest: mf.Manifest, paths: Iterable[str]) -> mf.Manifest:
    """The entries of `manifest` that `paths` name (files, or folders and what they hold), with the folders above
    them, and only the packs they use; NotFound naming the first path that is not in the tree."""
    entries = manifest.entries
    picked: dict[str, mf.Entry] = {}
    for path in paths:
        chosen = _chosen(entries, path)
        if not chosen:
            raise NotFound(f"{path!r} is not among the outputs", path=path)
        picked.update((e.path, e) for e in chosen)
    by_path = {e.path: e for e in entries}
    for path in list(picked):  # the folders above a chosen entry, so their modes come along
        parent = posixpath.dirname(path)
        while parent and parent not in picked and parent in by_path:
            picked[parent] = by_path[parent]
            parent = posixpath.dirname(parent)
    old = manifest.pack_ids
    used = sorted({e.pack for e in picked.values() if e.pack >= 0})
    index = {p: n for n, p in enumerate(used)}
    kept = [msgspec.structs.replace(e, pack=index[e.pack]) if e.pack >= 0 else e for e in picked.values()]
    return mf.build(kept, [old[p] for p in used])
