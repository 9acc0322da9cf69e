"""The job spec (`incl.yaml`): the user's contract, validated before anything is queued.

Every error is a `SpecInvalid` whose `field` is the path of the offending key (`resources.gpus`) and whose
message says why. Unknown keys are errors with a "did you mean".
"""

from __future__ import annotations

import difflib
import enum
import math
import posixpath
import re
import types
import typing
from pathlib import PurePosixPath
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

from incl.proto.errors import SpecInvalid
from incl.proto.hpo import PARAM_TYPES, Budget, CategoricalParam, FloatParam, Hpo, IntParam, Param, Pruner, check_hpo

__all__ = ["PARAM_TYPES", "CategoricalParam", "FloatParam", "Hpo", "IntParam", "JobSpec", "Param", "SpecInvalid",
           "load_spec"]


class _Spec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    pass


class Resources(_Spec, frozen=True):
    cpus: float = 1.0
    memory: int | None = None  # bytes; "16GB" style strings are accepted at load
    gpus: int = 0
    gpu_model: str | None = None
    nodes: int = 1
    instance_types: list[str] | None = None
    spot: bool | Literal["auto"] | None = None
    shm_size: int | None = None  # bytes of /dev/shm in the container; None: the agent's default
    efa: bool = False  # a multi-node job on AWS: EFA network interfaces, on instance types that have them


class DataMount(_Spec, frozen=True):
    source: str  # s3://bucket/prefix (copied once into the instance's cache) or a host path (FSx, EFS)
    target: str  # where the job sees it, read-only: absolute (in the container) or relative to the code dir


class Outputs(_Spec, frozen=True):
    exclude: list[str] = []  # gitignore-style patterns under $INCL_OUTPUT_DIR that are not uploaded
    ranks: int | Literal["all"] = 0  # a multi-node job: whose outputs are kept (`all`: every rank's, under rank-K/)


class Checkpoint(_Spec, frozen=True):
    sync_every: float = 300.0  # seconds ("5m" is accepted at load); 0: only when the job ends


class Retry(_Spec, frozen=True):
    max_attempts: int = 3  # attempts in all, counting the first; LOST attempts use them up
    on_failure: bool = False  # also retry a non-zero exit
    # Spot preemptions never use up attempts: the job resumes from its checkpoint. With `spot: auto` it goes
    # on-demand after this many (None: the cluster's default).
    max_preemptions: int | None = None


class IdleAction(enum.StrEnum):
    NOTIFY = "notify"
    STOP = "stop"


class GpuIdle(_Spec, frozen=True):
    """`gpu_idle:` over the cluster's default; a key left out (None) keeps the cluster's value."""

    threshold: float | None = None  # percent; "20%" is accepted at load
    window: float | None = None  # seconds the GPUs must stay below it; "15m" is accepted at load
    action: IdleAction | None = None
    grace: float | None = None  # seconds after the job starts during which samples are ignored


class NotifyEvent(enum.StrEnum):
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PREEMPTED = "preempted"
    RESUMED = "resumed"
    IDLE = "idle"  # an idle-GPU alert, and the message when the GPUs are busy again


class Notify(_Spec, frozen=True):
    """`notify:` over the cluster's default. `false` loads as `events: []`, a URL string as `webhook`, any
    other string as `channel`; `events: all` (or one name) as the list. The webhook URL is a secret: no repr
    and no error message shows it."""

    webhook: str | None = None  # a Slack incoming webhook
    channel: str | None = None  # a channel the admin mapped to a webhook; checked against them at submit
    events: frozenset[NotifyEvent] | None = None  # None: the cluster's

    def __repr__(self) -> str:
        webhook = None if self.webhook is None else f"<webhook {urlsplit(self.webhook).hostname or '?'}/***>"
        events = None if self.events is None else sorted(self.events)
        return f"Notify(webhook={webhook}, channel={self.channel!r}, events={events})"


class JobSpec(_Spec, frozen=True):
    run: str
    name: str | None = None
    setup: str | None = None
    workdir: str | None = None
    env: dict[str, str] = {}
    resources: Resources = Resources()
    retry: Retry = Retry()
    priority: int | str = 0  # a rank, or the name of a priority class (`high`, `normal`, `low`)
    user: str | None = None
    image: str | None = None  # run in this Docker image (None: the `process` runtime)
    secrets: dict[str, str] = {}  # env vars never shown back; REGISTRY_USERNAME/PASSWORD log in to pull `image`
    data: list[DataMount] = []
    outputs: Outputs = Outputs()
    checkpoint: Checkpoint = Checkpoint()
    gpu_idle: bool | GpuIdle | None = None  # None or true: the cluster's policy; false: not watched
    notify: Notify | None = None  # None: the cluster's default
    team: str | None = None
    hpo: Hpo | None = None


MAX_NODES = 256  # nodes of one multi-node job

# A spec travels in one NATS message (1 MiB by default): the CLI refuses a bigger spec before reading it.
MAX_SPEC_BYTES = 1_000_000

# Folders that hold an operating system, never a project: the workdir is uploaded whole.
SYSTEM_DIRS = frozenset({"/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/opt", "/proc",
                         "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/Users", "/System",
                         "/Library", "/Applications", "/Volumes", "/private"})

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)", re.IGNORECASE)
_WHOLE = re.compile(r"^\s*(?:\d+(?:\.\d+)?\s*(?:ms|s|m|h|d)\s*)+$", re.IGNORECASE)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_MAX_INT = 2**53
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A GPU model names a product: letters first, at least one digit (A100, H100, A100-80GB, L40S, RTX4090, MI300X).
_GPU_MODEL = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*[0-9][A-Za-z0-9_-]*$")


def parse_size(value: int | float | str) -> int:
    """Bytes from 1024, "512MB", "16GiB", "2g"."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 16GB")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value!r} is not a size such as 16GB")
    if isinstance(value, (int, float)):
        return int(value)
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a size such as 16GB")
    number, unit = float(m.group(1)), (m.group(2) or "b").lower()
    if unit == "b":
        return int(number)
    base = 1024 if "i" in unit else 1000
    return int(number * base ** ("kmgt".index(unit[0]) + 1))


def parse_duration(value: Any) -> float:
    """Seconds from 90, 1.5, "90", "30s", "15m", "1h", "1h30m", "2d". Raises ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{value!r} is not a duration such as 30s, 15m or 1h")
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            value = float(text)
        elif _WHOLE.match(text):
            value = sum(float(n) * _UNITS[u.lower()] for n, u in _PART.findall(text))
        else:
            raise ValueError(f"{value!r} is not a duration such as 30s, 15m or 1h")
    if not math.isfinite(value) or value < 0:
        raise ValueError("a duration must be a finite number of seconds, not negative")
    return float(value)


def _fields(struct: type[msgspec.Struct]) -> dict[str, Any]:
    return {f.name: f.type for f in msgspec.structs.fields(struct)}


def _struct_type(tp: Any) -> type[msgspec.Struct] | None:
    """The struct a value of type `tp` is, when it is a mapping: `Notify | None` -> Notify."""
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return tp
    structs = [t for t in typing.get_args(tp) if isinstance(t, type) and issubclass(t, msgspec.Struct)]
    return structs[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(structs) == 1 else None


def _choices(path: str) -> list[str]:
    """The values an enum or Literal field at `path` ("gpu_idle.action", "notify.events[1]") may take."""
    tp: Any = JobSpec
    for part in re.sub(r"\[\d+\]", "", path).split("."):
        struct = _struct_type(tp)
        tp = _fields(struct).get(part) if struct is not None else None
    found: list[str] = []
    todo = [tp]
    while todo:
        t = todo.pop()
        if isinstance(t, type) and issubclass(t, enum.Enum):
            found += [str(m.value) for m in t]
        elif typing.get_origin(t) is Literal:
            found += [str(v) for v in typing.get_args(t)]
        else:
            todo += typing.get_args(t)
    return found


def _close(word: Any, choices: list[str], what: str) -> str:
    """"; did you mean 'x'?" or "; <what>: a, b, c"."""
    close = difflib.get_close_matches(str(word), choices, n=1)
    return f"; did you mean '{close[0]}'?" if close else f"; {what}: {', '.join(sorted(choices))}"


def _check_keys(data: Any, struct: type[msgspec.Struct], path: str) -> None:
    if not isinstance(data, dict):
        return
    known = _fields(struct)
    for key, value in data.items():
        here = f"{path}.{key}" if path else str(key)
        if key == struct.__struct_config__.tag_field:
            continue  # `type: float` of an hpo param: its caller chose the struct by it
        if key not in known:
            raise SpecInvalid(f"unknown key{_close(key, list(known), 'known keys')}", field=here)
        sub = _struct_type(known[key])
        if sub is not None:
            _check_keys(value, sub, here)


def _drop_nulls(data: dict[str, Any], struct: type[msgspec.Struct]) -> dict[str, Any]:
    """`key:` with nothing after it (null in YAML) means the default, for keys whose default is not null."""
    defaults = {f.name: f.default for f in msgspec.structs.fields(struct)}
    return {k: v for k, v in data.items() if v is not None or defaults.get(k, msgspec.NODEFAULT) is None}


def _normalize(data: dict[str, Any]) -> dict[str, Any]:
    data = _drop_nulls(data, JobSpec)
    res = data.get("resources")
    if isinstance(res, dict):
        res = _drop_nulls(res, Resources)
        if "memory" in res and res["memory"] is not None:
            res["memory"] = _size(res["memory"], "resources.memory")
        if "gpus" in res:
            res["gpus"], model = _gpus(res["gpus"])
            if model is not None:
                res["gpu_model"] = model
        if res.get("shm_size") is not None:
            res["shm_size"] = _size(res["shm_size"], "resources.shm_size")
        data["resources"] = res
    outputs = data.get("outputs")
    if isinstance(outputs, dict) and isinstance(outputs.get("ranks"), str) and outputs["ranks"] != "all":
        raise SpecInvalid(f"must be a rank number (the default is 0) or all, not {outputs['ranks']!r}",
                          field="outputs.ranks")
    ckpt = data.get("checkpoint")
    if isinstance(ckpt, dict) and ckpt.get("sync_every") is not None:
        try:
            data["checkpoint"] = {**ckpt, "sync_every": parse_duration(ckpt["sync_every"])}
        except ValueError as exc:
            raise SpecInvalid(str(exc), field="checkpoint.sync_every") from None
    if isinstance(data.get("env"), dict):
        data["env"] = {k: _env_value(k, v) for k, v in data["env"].items()}
    if "gpu_idle" in data:
        data["gpu_idle"] = _gpu_idle(data["gpu_idle"])
    if "notify" in data:
        data["notify"] = _notify(data["notify"])
    if isinstance(data.get("hpo"), dict):
        data["hpo"] = _hpo(data["hpo"])
    return data


def _gpu_idle(value: Any) -> Any:
    """`true` (the cluster's policy) is null; "20%" a threshold of 20; "15m" a window of 900 seconds."""
    if value is None or value is True:
        return None
    if value is False:
        return False
    if not isinstance(value, dict):
        raise SpecInvalid("expected a mapping such as {threshold: 10, window: 15m} or false", field="gpu_idle")
    value = {k: v for k, v in value.items() if v is not None}  # `key:` with nothing after it: the cluster's
    if "threshold" in value:
        value["threshold"] = _percent(value["threshold"])
    for key in ("window", "grace"):
        if key in value:
            try:
                value[key] = parse_duration(value[key])
            except ValueError as exc:
                raise SpecInvalid(str(exc), field=f"gpu_idle.{key}") from None
    return value


def _percent(value: Any) -> float:
    text = value.strip().removesuffix("%") if isinstance(value, str) else value
    try:
        if isinstance(text, bool):
            raise ValueError
        return float(text)
    except (TypeError, ValueError):
        raise SpecInvalid(f"{value!r} is not a percentage such as 10", field="gpu_idle.threshold") from None


def _notify(value: Any) -> Any:
    """`false` is no events; a URL a webhook, another string a channel; `events: all` (or one name) a list."""
    if value is None or value is True:
        return None
    if value is False:
        return {"events": []}
    if isinstance(value, str):
        value = {"webhook": value} if value.startswith(("http://", "https://")) else {"channel": value}
    if not isinstance(value, dict):
        raise SpecInvalid("expected a mapping such as {channel: ml-alerts, events: [failed]}, a channel name, "
                          "a webhook URL or false", field="notify")
    value = dict(value)
    if isinstance(value.get("channel"), str):
        value["channel"] = value["channel"].lstrip("#")
    events = value.get("events")
    if events is None:
        return value
    names = [e.value for e in NotifyEvent]
    if not isinstance(events, (list, str)):
        raise SpecInvalid(f"expected a list of events from {', '.join(names)} (or all)", field="notify.events")
    out: set[str] = set()
    for name in [events] if isinstance(events, str) else events:
        if name == "all":
            out |= set(names)
        elif name in names:
            out.add(name)
        else:
            raise SpecInvalid(f"unknown event {name!r}{_close(name, [*names, 'all'], 'events')}",
                              field="notify.events")
    return {**value, "events": sorted(out)}


def _hpo(value: dict[str, Any]) -> dict[str, Any]:
    """Shorthands (`pruner: asha`, `wall: 12h`, a list of choices) expanded, and each of `params` checked on its
    own, so that an error names it: `hpo.params.lr.low`."""
    value = _drop_nulls(value, Hpo)
    if isinstance(value.get("pruner"), str):
        value["pruner"] = {"type": value["pruner"]}
    budget = value.get("budget")
    if isinstance(budget, dict):
        _check_keys(budget, Budget, "hpo.budget")
        if budget.get("wall") is not None:
            try:
                value["budget"] = {**budget, "wall": parse_duration(budget["wall"])}
            except ValueError as exc:
                raise SpecInvalid(str(exc), field="hpo.budget.wall") from None
    if isinstance(value.get("pruner"), dict):
        _check_keys(value["pruner"], Pruner, "hpo.pruner")
    params = value.get("params")
    if not isinstance(params, dict):
        return value  # the type check names it
    out: dict[Any, Any] = {}
    for name, dist in params.items():
        here = f"hpo.params.{name}"
        if isinstance(dist, list):
            dist = {"type": "categorical", "choices": dist}
        if not isinstance(dist, dict):
            raise SpecInvalid("expected a distribution such as {type: float, low: 0.0001, high: 0.1, log: true} "
                              "or a list of choices", field=here)
        kind = dist.get("type")
        if kind not in PARAM_TYPES:
            why = f"unknown type {kind!r}{_close(kind, list(PARAM_TYPES), 'types')}" if kind is not None else \
                f"needs a type: {', '.join(PARAM_TYPES)}"
            raise SpecInvalid(why, field=f"{here}.type")
        _check_keys(dist, PARAM_TYPES[kind], here)
        _convert(dist, PARAM_TYPES[kind], here)
        out[name] = dist
    return {**value, "params": out}


def _gpus(value: Any) -> tuple[Any, str | None]:
    """The GPU count and model from 2, "2", "A100:8" (SkyPilot style) or "A100" (one of that model)."""
    if isinstance(value, str):
        model, colon, count = value.strip().rpartition(":")
        if not colon and _GPU_MODEL.match(count):
            model, count = count, "1"
        number = _number(count)
        if number is None or (colon and not _GPU_MODEL.match(model)):
            raise SpecInvalid(f"{value!r} is not a GPU count or model such as 2, A100 or 'A100:8'",
                              field="resources.gpus")
        return _gpu_count(number, value), model or None
    return _gpu_count(value, value), None


def _number(text: str) -> int | float | None:
    for kind in (int, float):
        try:
            return kind(text) if text.isascii() else None
        except ValueError:
            pass
    return None


def _gpu_count(count: Any, given: Any) -> Any:
    if isinstance(count, (int, float)) and not isinstance(count, bool):
        if count < 0:
            raise SpecInvalid(f"a GPU count cannot be negative (got {given!r})", field="resources.gpus")
        if not math.isfinite(count) or count != int(count):
            raise SpecInvalid(f"a GPU count must be a whole number (got {given!r})", field="resources.gpus")
        return int(count)
    return count  # another type: the type check names it


def _size(value: Any, field: str) -> int:
    try:
        return parse_size(value)
    except (ValueError, OverflowError) as exc:  # OverflowError: a size past float range
        raise SpecInvalid(str(exc), field=field) from None


def _env_value(key: str, value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if value is None:
        raise SpecInvalid("an env value cannot be empty (null)", field=f"env.{key}")
    if not isinstance(value, str):
        raise SpecInvalid(f"expected a string, number or bool, got {type(value).__name__}", field=f"env.{key}")
    return value


def _convert(data: dict[str, Any], tp: Any = JobSpec, prefix: str = "") -> Any:
    """`data` as a `tp`; an error names the path under `prefix`."""
    try:
        return msgspec.convert(data, tp)
    except msgspec.ValidationError as exc:
        text = str(exc)
        reason, _, where = text.partition(" - at `")
        # msgspec says "$.a.b", "$.env[...]" (a mapping's value) or "key` in `$.env" (a mapping's key)
        field = where.rstrip("`").rpartition("`")[2].replace("[...]", "").removeprefix("$").lstrip(".") or None
        field = ".".join(p for p in (prefix, field) if p) or None
        if reason.startswith("Object missing required field"):
            name = reason.split("`")[1]
            field, reason = (f"{field}.{name}" if field else name), "is required"
        elif reason.startswith("Invalid enum value") and tp is JobSpec and (choices := _choices(field or "")):
            reason = f"must be one of {', '.join(choices)}, not {reason.removeprefix('Invalid enum value ')}"
        raise SpecInvalid(reason.lower() if reason[:1].isupper() else reason, field=field) from None


_TEAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def _semantic_checks(spec: JobSpec) -> None:
    if not spec.run.strip():
        raise SpecInvalid("must be a non-empty command", field="run")
    r = spec.resources
    priority = spec.priority if isinstance(spec.priority, int) else None
    for path, value in (("resources.memory", r.memory), ("resources.gpus", r.gpus), ("resources.nodes", r.nodes),
                        ("priority", priority), ("retry.max_attempts", spec.retry.max_attempts)):
        if value is not None and abs(value) > _MAX_INT:  # MessagePack carries 64-bit integers at most
            raise SpecInvalid(f"is too large (at most {_MAX_INT})", field=path)
    if not r.cpus > 0:  # also NaN
        raise SpecInvalid("must be greater than 0", field="resources.cpus")
    if r.gpus < 0:
        raise SpecInvalid("cannot be negative", field="resources.gpus")
    if r.memory is not None and r.memory <= 0:
        raise SpecInvalid("must be greater than 0", field="resources.memory")
    if r.nodes < 1:
        raise SpecInvalid("must be at least 1", field="resources.nodes")
    if r.nodes > MAX_NODES:
        raise SpecInvalid(f"{r.nodes} nodes is more than the {MAX_NODES} one job may span", field="resources.nodes")
    ranks = spec.outputs.ranks
    if ranks != "all" and not 0 <= ranks < r.nodes:
        raise SpecInvalid(f"must be a rank from 0 to {r.nodes - 1}, or all", field="outputs.ranks")
    if spec.retry.max_attempts < 1:
        raise SpecInvalid("must be at least 1", field="retry.max_attempts")
    if spec.team is not None and not _TEAM_NAME.fullmatch(spec.team):
        raise SpecInvalid("must be a team name: letters, digits, '-' and '_', at most 64", field="team")
    for section, names in (("env", spec.env), ("secrets", spec.secrets)):
        for key in names:
            if not _ENV_NAME.match(key):
                raise SpecInvalid("is not a valid environment variable name", field=f"{section}.{key}")
            if key.startswith("INCL_"):
                raise SpecInvalid("INCL_ variables are set by INCL and cannot be overridden", field=f"{section}.{key}")
    if r.shm_size is not None and not 0 < r.shm_size <= _MAX_INT:
        raise SpecInvalid("must be greater than 0", field="resources.shm_size")
    if spec.image is not None and not spec.image.strip():
        raise SpecInvalid("must name a Docker image such as pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime",
                          field="image")
    if not math.isfinite(spec.checkpoint.sync_every) or spec.checkpoint.sync_every < 0:
        raise SpecInvalid("must be a duration such as 5m (0: only when the job ends)", field="checkpoint.sync_every")
    _check_workdir(spec.workdir)
    _check_data(spec)
    if isinstance(spec.gpu_idle, GpuIdle):
        _check_gpu_idle(spec.gpu_idle)
    if spec.notify is not None:
        _check_notify(spec.notify)
    if spec.hpo is not None:
        check_hpo(spec.hpo, {**dict.fromkeys(spec.env, "env"), **dict.fromkeys(spec.secrets, "secrets")})


def _check_gpu_idle(idle: GpuIdle) -> None:
    if idle.threshold is not None and not 0 < idle.threshold <= 100:
        raise SpecInvalid("must be a percentage above 0 and at most 100", field="gpu_idle.threshold")
    if idle.window is not None and not (math.isfinite(idle.window) and idle.window > 0):
        raise SpecInvalid("must be a duration longer than 0s, such as 15m", field="gpu_idle.window")
    if idle.grace is not None and not (math.isfinite(idle.grace) and idle.grace >= 0):
        raise SpecInvalid("must be a duration such as 5m, not negative", field="gpu_idle.grace")


def _check_notify(notify: Notify) -> None:
    """Whether `channel` is one the cluster knows is the controller's check, at submit."""
    if notify.webhook is not None and notify.channel is not None:
        raise SpecInvalid("give either webhook or channel, not both", field="notify")
    if notify.webhook is not None:
        parts = urlsplit(notify.webhook)
        if parts.scheme not in ("http", "https") or not parts.hostname:  # the message never shows the URL
            raise SpecInvalid("must be an http(s) URL of a Slack incoming webhook", field="notify.webhook")
    if notify.channel is not None and not notify.channel.strip("#").strip():
        raise SpecInvalid("must be a channel name", field="notify.channel")


def _check_workdir(workdir: str | None) -> None:
    """The workdir is uploaded whole: the root of the filesystem or a system folder is never a project."""
    if workdir is None:
        return
    if not workdir.strip():
        raise SpecInvalid("must name a folder", field="workdir")
    path = posixpath.normpath(workdir)
    if not path.strip("/"):
        raise SpecInvalid("is the whole filesystem (/), not a project folder; name the folder that holds your "
                          "code", field="workdir")
    if path in SYSTEM_DIRS:
        raise SpecInvalid(f"{path} is a system folder, not a project folder; name the folder that holds your code",
                          field="workdir")


def _check_data(spec: JobSpec) -> None:
    targets: set[str] = set()
    for i, mount in enumerate(spec.data):
        here = f"data[{i}]"
        if not (mount.source.startswith("s3://") and len(mount.source) > 5) and not mount.source.startswith("/"):
            raise SpecInvalid("must be an s3://bucket/prefix or an absolute host path", field=f"{here}.source")
        target = PurePosixPath(mount.target)
        if not mount.target.strip() or ".." in target.parts:
            raise SpecInvalid("must be a path without '..'", field=f"{here}.target")
        if target.is_absolute() and spec.image is None:
            raise SpecInvalid("an absolute target needs a Docker `image:` (without one, give a path relative "
                              "to the code directory)", field=f"{here}.target")
        if str(target) in targets:
            raise SpecInvalid(f"{mount.target} is the target of another data entry", field=f"{here}.target")
        targets.add(str(target))


def check_spec(spec: JobSpec) -> JobSpec:
    """The checks beyond types, for a JobSpec that arrived already decoded (e.g. on the wire)."""
    _semantic_checks(spec)
    return spec


def load_spec(data: Any) -> JobSpec:
    """Validate a parsed `incl.yaml` (a mapping) into a JobSpec, or raise SpecInvalid naming the field."""
    if not isinstance(data, dict):
        raise SpecInvalid(f"the spec must be a mapping of keys to values, not {type(data).__name__}")
    _check_keys(data, JobSpec, "")
    return check_spec(_convert(_normalize(data)))
