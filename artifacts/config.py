"""Every limit, timeout and size of the artifact store and of tree sync, with its default here and only here."""

from __future__ import annotations

import msgspec

MiB = 1 << 20


class StoreConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a store talks to its backend. Credentials are never here: S3 uses the standard AWS chain."""

    max_concurrency: int = 32  # requests in flight to the store, all callers together
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 6  # attempts per request on throttling, 5xx and connection errors, then StoreUnavailable
    retry_initial: float = 0.2  # backoff: a random wait up to this before the second attempt, doubling...
    retry_max: float = 10.0  # ...up to this
    multipart_threshold: int = 16 * MiB  # files bigger than this go up in parts
    part_size: int = 8 * MiB  # raised as needed to stay within S3's 10,000 parts
    part_concurrency: int = 4  # parts of one file in flight at once
    chunk_size: int = 1 * MiB  # read and write size when streaming a download
    inline_read_max: int = 64 * 1024  # smaller files are read on the event loop, bigger ones in a thread
    endpoint_url: str | None = None  # else $INCL_S3_ENDPOINT_URL, $AWS_ENDPOINT_URL_S3, then AWS's own
    region: str | None = None  # else the AWS chain (AWS_REGION, ~/.aws/config)
    fsync: bool = True  # file:// store: a stored object survives a crash once put returns


class TreeLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How push_tree and pull_tree work through a tree."""

    max_bytes: int | None = None  # refuse a tree bigger than this (the CLI passes its snapshot limit)
    biggest_shown: int = 5  # files named when a tree is over max_bytes
    io_workers: int = 4  # threads that hash files (those the hash cache does not know) and copy them out
    batch_bytes: int = 8 * MiB  # small files are hashed and copied in batches of about this size...
    batch_files: int = 256  # ...or this many files
    # Finding the blobs a store lacks (see push.py): a LIST page (1,000 keys) costs about as much as this
    # many HEADs or small PUTs, so with N unknown blobs the store's first N // this pages are listed...
    blobs_per_list_page: int = 200
    blind_put_max: int = 1 * MiB  # ...and past them, unknown blobs this small are PUT unasked (unless most are there)
    known_ttl: float = 24 * 3600.0  # trust a local record that the store holds a blob for this long
    # Packs (packs.py): a tree with at least pack_min_files distinct contents of at most pack_file_max bytes
    # stores those in packs of about pack_bytes. Below that count a blob per file costs a few hundred ms at
    # most and dedups file by file across trees; above it, per-object costs (a PUT, an inode, a 4 KiB block,
    # a known-blob record each) dominate.
    pack_min_files: int = 1000
    pack_file_max: int = 64 * 1024
    pack_bytes: int = 4 * MiB
    pack_keep_bytes: int = 256 * MiB  # small files' bytes kept in memory from hashing to building packs
    transfers: int = 64  # blobs and packs in flight per push or pull (the store bounds its requests itself)
    racy_window: float = 1.0  # a file modified this recently is hashed again next time (git's racy-clean rule)
    # Reading a file for a snapshot (reading.py): reads of a file rewritten in place before it counts as
    # changing; in a tree a running job writes (push_tree's unsettled="keep_previous"), a file modified less
    # than settle_time ago is read once that long has passed (a write in progress sets the mtime before all
    # its bytes have landed).
    read_attempts: int = 3
    settle_time: float = 0.05
    open_files: int = 256  # big files held open from hashing to upload; past this, an upload opens the path again
    lock_poll: float = 0.05  # data cache: how often a fetch waiting on another's lock of the same source retries


class GcConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Garbage collection of the store (gc.py, `incl gc`)."""

    # A job's trees stay this long after it ended (running and queued jobs' trees always stay).
    retention: float = 30 * 24 * 3600.0
    # An object unreferenced this long (and written at least this long ago) goes. At least TreeLimits.known_ttl:
    # a client trusts its record that the store holds a blob for that long, and does not upload it again.
    grace: float = 24 * 3600.0
    manifest_reads: int = 32  # manifests read at once while marking
    deletes: int = 32  # objects deleted at once
