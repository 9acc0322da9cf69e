"""Share links: signed, expiring, revocable, read-only access to one output, folder or model version.

    KV incl_shares   <id>   Share (proto/shares.py): written at creation, written again when revoked; kept after
                            it ends, so that an old link says why it no longer opens
    key file         ShareConfig.key_file (0600, made on first start): every controller of a cluster reads the same

A link is `<web url>/s/<id>.<signature>`, the signature HMAC-SHA256(key, id). Resolving checks the signature first
(with `hmac.compare_digest`, in constant time) and only then looks the id up, so a forged or altered token learns
nothing, not even whether the id exists: both are "no such link". The record fixes what is shared when the link
is made (the trees and the path in them), so the web server serves that and nothing else, and needs no right to
read the job itself. The controller is the only writer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import structlog

from incl.artifacts import browse
from incl.artifacts import errors as store_errors
from incl.artifacts.store import open_store
from incl.auth.sealing import key_file
from incl.bus.kv import Bucket
from incl.controller.models import Models
from incl.controller.store import Records
from incl.proto.codec import Decoder, encode
from incl.proto.errors import BadRequest, InclError, NotAllowed, NotFound
from incl.proto.messages import Job
from incl.proto.outputs import attempt_with_outputs, rank_trees
from incl.proto.registry import ModelRef
from incl.proto.shares import (
    ID,
    CreateShareReply,
    CreateShareRequest,
    ResolveShareReply,
    Share,
    SharedTree,
    ShareKind,
    ShareTarget,
    check_target,
)

log = structlog.get_logger()

KEY_BYTES = 32
_DOMAIN = b"incl-share-1\n"  # what the key signs is a share id, nothing else


class ShareConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    key_file: str | None = None  # None: $INCL_HOME/controller/share.key
    default_ttl: float = 7 * 86400.0  # a link made without --expires
    max_ttl: float = 366 * 86400.0  # the longest a link may live

    def key_path(self) -> Path:
        """The signing key's file (made on first start, mode 0600); every controller of a cluster reads the same."""
        if self.key_file is not None:
            return Path(self.key_file)
        return Path(os.environ.get("INCL_HOME", Path.home() / ".incl")) / "controller" / "share.key"


def sign(key: bytes, share_id: str) -> str:
    mac = hmac.new(key, _DOMAIN + share_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def verified_id(key: bytes, token: str) -> str | None:
    """The share id a token names, if its signature is the controller's (compared in constant time)."""
    share_id, dot, signature = token.partition(".")
    if not dot or not ID.fullmatch(share_id):
        return None
    if not hmac.compare_digest(sign(key, share_id).encode(), signature.encode("utf-8", "replace")):
        return None
    return share_id


DEFAULTS = ShareConfig()
NO_LINK = "no such share link (it may be mistyped or cut short)"


def load_key(path: Path) -> bytes:
    """The signing key kept in `path`, made (random, mode 0600) on first use."""
    return key_file(path, KEY_BYTES)


class Shares:
    def __init__(self, bucket: Bucket, jobs: Records[Job], models: Models, store_url: str | None, key: bytes,
                 cfg: ShareConfig = DEFAULTS, fence: Callable[[], None] = lambda: None) -> None:
        self._kv = bucket
        self._jobs = jobs
        self._models = models
        self._store_url = store_url
        self._key = key
        self._cfg = cfg
        self._fence = fence  # raises when this controller may no longer write (a deposed leader)
        self._decoder: Decoder[Share] = Decoder(Share)

    # --- writes -------------------------------------------------------------------------------------------

    async def create(self, req: CreateShareRequest, caller: str) -> CreateShareReply:
        """Everything is checked before the record is written: the target exists and names something."""
        target = check_target(req.target)
        ttl = self._cfg.default_ttl if req.expires_in is None else req.expires_in
        if not 0 < ttl <= self._cfg.max_ttl:
            raise BadRequest(f"a link lives more than 0 s and at most {self._cfg.max_ttl / 86400:.0f} days",
                             field="expires")
        kind, trees, files, size = await (self._model(target) if target.model is not None else self._output(target))
        now = time.time()
        share = Share(id=f"sh-{secrets.token_hex(8)}", kind=kind, target=target, trees=trees, created_by=caller,
                      created_at=now, expires_at=now + ttl, files=files, bytes=size)
        self._fence()
        await self._kv.create(share.id, encode(share))
        log.info("share_created", share_id=share.id, kind=kind, target=str(target), by=caller,
                 expires_at=share.expires_at)
        return CreateShareReply(share=share, token=f"{share.id}.{sign(self._key, share.id)}")

    async def _output(self, target: ShareTarget) -> tuple[ShareKind, list[SharedTree], int, int]:
        job = await self._jobs.need(str(target.job_id), "job")
        # Whether the caller may read the job was checked by the API (`Api.create_share`, `policy.check_read`).
        att = attempt_with_outputs(job, None)
        if att is None:
            raise NotFound(f"job {job.id} left no outputs: there is nothing to share")
        trees = [SharedTree(folder=folder, digest=ref.digest) for folder, ref in rank_trees(job, att)]
        try:
            chosen = browse.under(await self._items(trees), target.path)
        except store_errors.NotFound:
            raise NotFound(f"{target.path!r} is not among the outputs of job {job.id}", field="path") from None
        path = browse.clean(target.path)
        kind: ShareKind = "output" if len(chosen) == 1 and chosen[0].kind == "file" and path else "folder"
        files = [i for i in chosen if i.kind == "file"]
        return kind, trees, len(files), sum(i.size for i in files)

    async def _model(self, target: ShareTarget) -> tuple[ShareKind, list[SharedTree], int, int]:
        version = (await self._models.get(ModelRef(str(target.model), target.version))).version
        # The registry is readable by every user (docs/models.md), so is a version's share.
        return "model", [SharedTree(folder="", digest=version.tree.digest)], version.tree.files, version.tree.bytes

    async def _items(self, trees: list[SharedTree]) -> list[browse.Item]:
        if self._store_url is None:
            raise InclError("the controller names no artifact store (its `store_url` is empty)")
        async with open_store(self._store_url) as store:
            return await browse.items(store, [(t.folder, t.digest) for t in trees])

    async def revoke(self, share_id: str, caller: str) -> Share:
        """The link stops opening at once; revoking it again changes nothing."""
        share = await self._get(share_id)
        if share is None:
            raise NotFound(f"no share {share_id} (incl share ls lists yours)")
        if share.created_by != caller:
            raise NotAllowed(f"not allowed: share {share_id} was made by {share.created_by}")
        if share.revoked:
            return share
        share = msgspec.structs.replace(share, revoked=True, revoked_at=time.time(), revoked_by=caller)
        self._fence()
        await self._kv.put(share.id, encode(share))
        log.info("share_revoked", share_id=share.id, by=caller)
        return share

    # --- reads --------------------------------------------------------------------------------------------

    async def list(self, caller: str | None) -> list[Share]:
        """The caller's shares (None: everyone's), newest first, whatever their state."""
        mine = []
        for key in await self._kv.keys():
            share = await self._get(key)
            if share is not None and (caller is None or share.created_by == caller):
                mine.append(share)
        return sorted(mine, key=lambda s: s.created_at, reverse=True)

    async def resolve(self, token: str) -> ResolveShareReply:
        """What a link opens. The signature is checked before the id is looked up (see the module docstring)."""
        share_id = verified_id(self._key, token)
        share = await self._get(share_id) if share_id is not None else None
        if share is None:
            raise NotFound(NO_LINK)
        state = share.state(time.time())
        if state == "active":
            return ResolveShareReply(state=state, share=share)
        return ResolveShareReply(state=state, ended_at=share.revoked_at if share.revoked else share.expires_at)

    async def _get(self, share_id: str) -> Share | None:
        if not ID.fullmatch(share_id):
            return None
        entry = await self._kv.get(share_id)
        return self._decoder.decode(entry[0]) if entry else None
