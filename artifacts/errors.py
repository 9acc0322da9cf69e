"""What can go wrong with a tree or the store, one class per problem; each message names the path or key.

    ArtifactError
    ├── SnapshotError             a tree that cannot be snapshotted as it is (the user fixes the tree)
    │   ├── TreeTooLarge          over the size limit; lists the biggest files and suggests .inclignore
    │   ├── UnreadableFile        a file or folder the walk may not read
    │   ├── UnsupportedFile       a socket, fifo or device, or a name that is not UTF-8
    │   ├── SymlinkOutside        a symlink that points outside the tree
    │   ├── SymlinkLoop           a symlink that resolves to itself
    │   └── FileChanged           a file that changed while it was hashed or uploaded
    ├── StoreError                the store could not do what was asked
    │   ├── InvalidStoreUrl       not file://DIR or s3://bucket[/prefix]
    │   ├── NotFound              no object under that key (a blob, a manifest, a ref)
    │   ├── StoreUnavailable      retries with backoff ran out (throttling, 5xx, connection errors)
    │   └── IntegrityError        downloaded bytes whose sha256 is not the one asked for
    └── InvalidManifest           a manifest or ref that is malformed or would write outside its folder

Callers match on the class, never on the message text.
"""

from __future__ import annotations


class ArtifactError(Exception):
    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class SnapshotError(ArtifactError):
    pass


class TreeTooLarge(SnapshotError):
    pass


class UnreadableFile(SnapshotError):
    pass


class UnsupportedFile(SnapshotError):
    pass


class SymlinkOutside(SnapshotError):
    pass


class SymlinkLoop(SnapshotError):
    pass


class FileChanged(SnapshotError):
    @classmethod
    def while_uploading(cls, path: object) -> FileChanged:
        return cls(f"{path} changed while it was uploaded (its content no longer matches the hash taken moments "
                   "before); snapshot again once nothing writes to it", path=str(path))


class StoreError(ArtifactError):
    pass


class InvalidStoreUrl(StoreError):
    pass


class NotFound(StoreError):
    pass


class StoreUnavailable(StoreError):
    pass


class IntegrityError(StoreError):
    pass


class InvalidManifest(ArtifactError):
    pass
