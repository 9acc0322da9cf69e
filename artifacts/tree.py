"""Directory trees in the artifact store: one mechanism for code snapshots, outputs and checkpoints.

    push_tree(store, root, ...) -> PushResult      a folder in, sending only what the store lacks (push.py)
    pull_tree(store, tree, dest, blob_cache=...)   a folder out, through an instance's blob cache (pull.py)
    resolve_ref(store, ref) -> digest | None       what a named ref points at (refs.py)
    read_manifest(store, tree) -> (digest, Manifest)

A tree is named by its manifest's SHA-256 or by a ref (`jobs/<job>/checkpoints`). Checkpoint-style
incremental sync is push_tree on the same folder with the same ref and hash cache: only files that changed
are hashed and uploaded.
"""

from incl.artifacts.blobcache import BlobCache
from incl.artifacts.config import TreeLimits
from incl.artifacts.hashcache import HashCache
from incl.artifacts.manifest import Entry, Manifest
from incl.artifacts.pull import PullResult, pull_tree
from incl.artifacts.push import Progress, PushResult, push_tree
from incl.artifacts.refs import read_manifest, resolve_ref, write_ref

__all__ = [
    "BlobCache", "Entry", "HashCache", "Manifest", "Progress", "PullResult", "PushResult", "TreeLimits",
    "pull_tree", "push_tree", "read_manifest", "resolve_ref", "write_ref",
]
