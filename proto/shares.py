"""Share links on the wire: a share's record and the requests `incl share` and the web UI make.

A share is read-only access to one artifact (a job's output file, an outputs folder, or a model version) for
anyone holding its link, `<web url>/s/<id>.<signature>`, until it expires or is revoked. The signature is an HMAC
of the id under a key only the controller holds, so a link cannot be made or altered without the controller; the
id alone (what `incl share ls` shows, what revoking takes) opens nothing. The record fixes what is shared when the
link is made: the trees and the path within them, so a link never serves anything else.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from incl.proto.errors import BadRequest
from incl.proto.messages import Reply, Request

ShareKind = Literal["output", "folder", "model"]
ShareState = Literal["active", "expired", "revoked"]
ID = re.compile(r"sh-[0-9a-f]{16}")
MAX_PATH = 1024


class _Struct(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class ShareTarget(_Struct, frozen=True):
    """What to share: a job's outputs (`path` in them: a file or a folder; "" all of them), or a model version."""
    job_id: str | None = None
    path: str = ""
    model: str | None = None
    version: int | None = None

    def __str__(self) -> str:
        if self.model is not None:
            return f"{self.model}:v{self.version}"
        return f"{self.job_id}:{self.path}" if self.path else str(self.job_id)


class SharedTree(_Struct, frozen=True):
    folder: str  # where the tree's entries go: "" or "rank-K/"
    digest: str


class Share(_Struct, frozen=True):
    id: str
    kind: ShareKind
    target: ShareTarget
    trees: list[SharedTree]  # what the link serves (`target.path` in them), fixed when it was made
    created_by: str  # the caller the request's subject named
    created_at: float
    expires_at: float
    files: int = 0
    bytes: int = 0
    revoked: bool = False
    revoked_at: float | None = None
    revoked_by: str | None = None

    def state(self, now: float) -> ShareState:
        return "revoked" if self.revoked else "expired" if now >= self.expires_at else "active"

    @property
    def name(self) -> str:
        """What a download of the whole share is called: the file's or folder's name, the job, or the model."""
        if self.target.model is not None:
            return f"{self.target.model}-v{self.target.version}"
        return self.target.path.rstrip("/").rsplit("/", 1)[-1] if self.target.path else str(self.target.job_id)


def check_target(target: ShareTarget) -> ShareTarget:
    """BadRequest unless the target names exactly one job (with a path) or one model version."""
    if (target.job_id is None) == (target.model is None):
        raise BadRequest("a share names a job (JOB[:PATH]) or a model version (NAME:vN), one of them")
    if target.model is not None and (target.version is None or target.path):
        raise BadRequest("a model share names one version (NAME:vN) and no path")
    if len(target.path) > MAX_PATH:
        raise BadRequest(f"the path is {len(target.path)} characters; at most {MAX_PATH}")
    return target


class CreateShareRequest(Request, frozen=True):
    target: ShareTarget
    expires_in: float | None = None  # seconds; None: the controller's default (7 days)


class CreateShareReply(Reply, frozen=True):
    share: Share
    token: str  # `<id>.<signature>`: the link is <web url>/s/<token>


class ListSharesRequest(Request, frozen=True):
    everyone: bool = False  # every user's links (cluster admins only: a garbage collection keeps what they open)


class ListSharesReply(Reply, frozen=True):
    shares: list[Share]  # the caller's (or everyone's), newest first


class RevokeShareRequest(Request, frozen=True):
    share_id: str


class RevokeShareReply(Reply, frozen=True):
    share: Share


class ResolveShareRequest(Request, frozen=True):
    token: str


class ResolveShareReply(Reply, frozen=True):
    """What a link opens: `share` only while it is active; an expired or revoked one says when it ended."""
    state: ShareState
    share: Share | None = None
    ended_at: float | None = None


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """`90` or `90s`, `30m`, `24h`, `7d`, `2w` in seconds; BadRequest for anything else."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)\s*", text)
    if match is None or float(match[1]) <= 0:
        raise BadRequest(f"{text!r} is not a duration: write it 90s, 30m, 24h, 7d or 2w", field="expires")
    return float(match[1]) * _UNITS[match[2] or "s"]
