"""The artifact store: code snapshots, outputs, checkpoints and cached data as content-addressed trees.

    store.py      ArtifactStore, open_store(url): file://DIR (filestore.py) or s3://bucket/prefix (s3store.py)
    tree.py       push_tree / pull_tree / resolve_ref / read_manifest, BlobCache, HashCache
    snapshot.py   the walk: .gitignore and .inclignore, and the refusals (errors.py)
    datacache.py  fetch_prefix: an s3:// prefix copied once into an instance-local cache
    config.py     StoreConfig and TreeLimits: every limit and timeout, defaults in one place

Importing this package does not import the S3 client; the first S3 request does.
"""

from incl.artifacts.config import StoreConfig, TreeLimits
from incl.artifacts.store import ArtifactStore, ObjectInfo, open_store
from incl.artifacts.tree import (
                                 BlobCache,
                                 HashCache,
                                 PullResult,
                                 PushResult,
                                 pull_tree,
                                 push_tree,
                                 read_manifest,
                                 resolve_ref,
)

__all__ = [
    "ArtifactStore", "BlobCache", "HashCache", "ObjectInfo", "PullResult", "PushResult", "StoreConfig",
    "TreeLimits", "open_store", "pull_tree", "push_tree", "read_manifest", "resolve_ref",
]
