"""The job spec (`incl.yaml`): the user's contract, validated before anything is queued.

Every error is a `SpecInvalid` whose `field` is the path of the offending key (`resources.gpus`) and whose
message says why. Unknown keys are errors with a "did you mean". Keys whose feature is not built yet are
refused with "not supported yet" rather than silently ignored.
"""

from __future__ import annotations

import difflib
import math
import posixpath
import re
from pathlib import PurePosixPath
from typing import Any, Literal

import msgspec

from incl.proto.errors import SpecInvalid


class _Spec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    pass


class Resources(_Spec):
    cpus: float = 1.0
    memory: int | None = None  # bytes; "16GB" style strings are accepted at load
    gpus: int = 0
    gpu_model: str | None = None
    nodes: int = 1
    instance_types: list[str] | None = None
    spot: bool | Literal["auto"] | None = None
    shm_size: int | None = None  # bytes of /dev/shm in the container; None: the agent's default


class DataMount(_Spec):
    source: str  # s3://bucket/prefix (copied once into the instance's cache) or a host path (FSx, EFS)
    target: str  # where the job sees it, read-only: absolute (in the container) or relative to the code dir


class Outputs(_Spec):
    exclude: list[str] = []  # gitignore-style patterns under $INCL_OUTPUT_DIR that are not uploaded


class Checkpoint(_Spec):
    sync_every: float = 300.0  # seconds ("5m" is accepted at load); 0: only when the job ends


class Retry(_Spec):
    max_attempts: int = 3  # attempts in all, counting the first; LOST attempts use them up
    on_failure: bool = False  # also retry a non-zero exit
    # Spot preemptions never use up attempts: the job resumes from its checkpoint. With `spot: auto` it goes
    # on-demand after this many (None: the cluster's default).
    max_preemptions: int | None = None


class JobSpec(_Spec):
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
    gpu_idle: Any = None
    notify: Any = None
    team: str | None = None
    hpo: Any = None


NOT_SUPPORTED_YET = {
    "hpo": "hyperparameter search is",
    "resources.nodes": "multi-node jobs are",
}

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
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return tp
    return None


def _check_keys(data: Any, struct: type[msgspec.Struct], path: str) -> None:
    if not isinstance(data, dict):
        return
    known = _fields(struct)
    for key, value in data.items():
        here = f"{path}.{key}" if path else str(key)
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(sorted(known))}"
            raise SpecInvalid(f"unknown key{hint}", field=here)
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
    ckpt = data.get("checkpoint")
    if isinstance(ckpt, dict) and ckpt.get("sync_every") is not None:
        try:
            data["checkpoint"] = {**ckpt, "sync_every": parse_duration(ckpt["sync_every"])}
        except ValueError as exc:
            raise SpecInvalid(str(exc), field="checkpoint.sync_every") from None
    if isinstance(data.get("env"), dict):
        data["env"] = {k: _env_value(k, v) for k, v in data["env"].items()}
    return data


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


def _convert(data: dict[str, Any]) -> JobSpec:
    try:
        return msgspec.convert(data, JobSpec)
    except msgspec.ValidationError as exc:
        text = str(exc)
        reason, _, where = text.partition(" - at `")
        # msgspec says "$.a.b", "$.env[...]" (a mapping's value) or "key` in `$.env" (a mapping's key)
        field = where.rstrip("`").rpartition("`")[2].replace("[...]", "").removeprefix("$").lstrip(".") or None
        if reason.startswith("Object missing required field"):
            name = reason.split("`")[1]
            field, reason = (f"{field}.{name}" if field else name), "is required"
        raise SpecInvalid(reason.lower() if reason[:1].isupper() else reason, field=field) from None


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
    if spec.retry.max_attempts < 1:
        raise SpecInvalid("must be at least 1", field="retry.max_attempts")
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


def _not_supported(spec: JobSpec) -> None:
    defaults = {"resources.nodes": 1}
    for path, feature in NOT_SUPPORTED_YET.items():
        obj: Any = spec
        for part in path.split("."):
            obj = getattr(obj, part)
        if obj is not None and obj != defaults.get(path):
            raise SpecInvalid(f"not supported yet ({feature} not built)", field=path)


def check_spec(spec: JobSpec) -> JobSpec:
    """The checks beyond types, for a JobSpec that arrived already decoded (e.g. on the wire)."""
    _semantic_checks(spec)
    _not_supported(spec)
    return spec


def load_spec(data: Any) -> JobSpec:
    """Validate a parsed `incl.yaml` (a mapping) into a JobSpec, or raise SpecInvalid naming the field."""
    if not isinstance(data, dict):
        raise SpecInvalid(f"the spec must be a mapping of keys to values, not {type(data).__name__}")
    _check_keys(data, JobSpec, "")
    return check_spec(_convert(_normalize(data)))
