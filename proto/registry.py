"""The model registry on the wire: a model version's record, its aliases, and the requests `incl model` makes.

A version is immutable: its number, its files (a tree in the artifact store made of the job's own output blobs)
and its lineage are fixed when it is registered. An alias (`production`, `staging`) is a movable name for one
version of one model. Names and aliases follow one rule (`check_name`), so that each is one part of a store ref
(`refs/models/<name>/v<N>`) and of a KV key, and `NAME:vN` / `NAME@alias` parse without ambiguity.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import msgspec

from incl.proto.errors import BadRequest
from incl.proto.hpo import Choice
from incl.proto.messages import JobState, Reply, Request, TreeRef

NAME_RULE = ("starts with a letter or digit, then letters, digits, '-', '_' or '.' (no two dots in a row, "
             "none at the end), at most 64 characters")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*")
MAX_NAME = 64
MAX_METRICS = 200  # final metrics kept per version: the names a job logs are its own, so they are bounded
MAX_NOTE = 2000


class _Struct(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


def check_name(name: str, what: str = "model name") -> str:
    """`name` if it may name a model or an alias; BadRequest saying the rule otherwise."""
    if len(name) > MAX_NAME or not _NAME.fullmatch(name):
        raise BadRequest(f"{name!r} is not a valid {what}: it {NAME_RULE}")
    return name


class ModelRef(NamedTuple):
    """What `NAME`, `NAME:vN` or `NAME@alias` names: a model, and at most one of a version and an alias."""
    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        return self.name + (f":v{self.version}" if self.version is not None else "") + (
            f"@{self.alias}" if self.alias is not None else "")


def parse_ref(text: str) -> ModelRef:
    """`NAME` (the latest version), `NAME:vN` or `NAME@alias`; BadRequest for anything else."""
    name, at, alias = text.partition("@")
    name, colon, version = name.partition(":")
    if at and colon:
        raise BadRequest(f"{text!r}: give a version (NAME:vN) or an alias (NAME@alias), not both")
    check_name(name)
    if colon:
        if not re.fullmatch(r"v[1-9][0-9]{0,8}", version):
            raise BadRequest(f"{text!r}: a version is written v1, v2, ... (NAME:vN)")
        return ModelRef(name, version=int(version[1:]))
    if at:
        return ModelRef(name, alias=check_name(alias, "alias"))
    return ModelRef(name)


class Lineage(_Struct, frozen=True):
    """Where a version came from: enough to find, rerun or compare the job that made it."""
    job_id: str
    job_name: str
    job_state: JobState
    attempt: int
    user: str  # who submitted the job
    code: TreeRef | None = None  # the job's workdir snapshot
    image: str | None = None
    env: dict[str, str] = {}  # the spec's env (secrets are not in it: they have their own field)
    params: dict[str, Choice] = {}  # an HPO trial's hyperparameters
    study_id: str | None = None
    metrics: dict[str, float] = {}  # the last value of each metric the job logged (at most MAX_METRICS)


class ModelVersion(_Struct, frozen=True):
    name: str
    version: int
    tree: TreeRef  # the version's files: the job's outputs, or the part `--path` chose
    lineage: Lineage
    registered_by: str  # the caller the request's subject named
    registered_at: float
    paths: list[str] = []  # what `--path` chose (empty: every output)
    note: str | None = None


class ModelAlias(_Struct, frozen=True):
    name: str
    alias: str
    version: int
    set_by: str
    set_at: float


class ModelSummary(_Struct, frozen=True):
    name: str
    versions: int
    latest: ModelVersion
    aliases: dict[str, int] = {}  # alias -> version


class RegisterModelRequest(Request, frozen=True):
    name: str
    job_id: str
    # output files or folders (a folder: with or without a trailing '/'); empty: all
    paths: list[str] = msgspec.field(default_factory=list)
    alias: str | None = None
    note: str | None = None


class RegisterModelReply(Reply, frozen=True):
    version: ModelVersion


class ListModelsRequest(Request, frozen=True):
    pass


class ListModelsReply(Reply, frozen=True):
    models: list[ModelSummary]


class ListVersionsRequest(Request, frozen=True):
    """Every version of `name`, or of every model, made from `job_id` if given (the job's page asks this)."""
    name: str | None = None
    job_id: str | None = None


class ListVersionsReply(Reply, frozen=True):
    versions: list[ModelVersion]  # by model name, then number


class GetModelRequest(Request, frozen=True):
    name: str
    version: int | None = None  # neither this nor `alias`: the latest version
    alias: str | None = None


class GetModelReply(Reply, frozen=True):
    version: ModelVersion  # the one asked for
    versions: list[int] = msgspec.field(default_factory=list)  # every version of the model
    aliases: dict[str, int] = msgspec.field(default_factory=dict)


class AliasModelRequest(Request, frozen=True):
    name: str
    version: int
    alias: str


class AliasModelReply(Reply, frozen=True):
    alias: ModelAlias
    previous: int | None = None  # the version the alias named before, if any
