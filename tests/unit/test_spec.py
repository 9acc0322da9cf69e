"""The job spec a user writes, and the job-side SDK a user's code calls."""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import incl
from incl import _sdk
from incl.proto.errors import SpecInvalid
from incl.proto.spec import (
    GpuIdle,
    IdleAction,
    JobSpec,
    Notify,
    NotifyEvent,
    Resources,
    Retry,
    check_spec,
    load_spec,
)


def _refused(data: Any) -> SpecInvalid:
    with pytest.raises(SpecInvalid) as info:
        load_spec(data)
    return info.value


def _refused_at(data: Any, field: str, *reason_parts: str) -> SpecInvalid:
    """The spec is refused, the error names `field`, and its message says why."""
    exc = _refused(data)
    assert exc.field == field, str(exc)
    assert exc.message.strip()
    assert str(exc) == f"{field}: {exc.message}"
    for part in reason_parts:
        assert part in exc.message
    return exc


def _nest(path: str, value: Any) -> dict[str, Any]:
    """{"run": ...} with `value` placed at a dotted path: "resources.nodes" -> {"resources": {"nodes": value}}."""
    for part in reversed(path.split(".")):
        value = {part: value}
    return {"run": "python train.py", **value}


# --- valid specs -------------------------------------------------------------------------------------------


def test_minimal_spec_gets_the_defaults() -> None:
    spec = load_spec({"run": "python train.py"})
    assert spec == JobSpec(run="python train.py")
    assert spec.resources == Resources(cpus=1.0, memory=None, gpus=0, gpu_model=None)
    assert spec.retry == Retry(max_attempts=3, on_failure=False)
    assert (spec.env, spec.priority, spec.name) == ({}, 0, None)


def test_full_spec_keeps_every_supported_field() -> None:
    spec = load_spec(
        {
            "run": "torchrun train.py",
            "name": "bert-large",
            "setup": "pip install -r requirements.txt",
            "workdir": "./src",
            "env": {"LR": "0.001", "WANDB_MODE": "offline"},
            "resources": {"cpus": 8, "memory": "64GiB", "gpus": 4, "gpu_model": "A100", "nodes": 1},
            "retry": {"max_attempts": 5, "on_failure": True},
            "priority": 10,
            "user": "ann",
        }
    )
    assert spec == JobSpec(
        run="torchrun train.py",
        name="bert-large",
        setup="pip install -r requirements.txt",
        workdir="./src",
        env={"LR": "0.001", "WANDB_MODE": "offline"},
        resources=Resources(cpus=8.0, memory=64 * 2**30, gpus=4, gpu_model="A100"),
        retry=Retry(max_attempts=5, on_failure=True),
        priority=10,
        user="ann",
    )


def test_keys_set_to_null_are_the_same_as_absent() -> None:
    """`key:` with nothing after it in YAML means the default."""
    data = {"run": "x", "image": None, "secrets": None, "data": None, "outputs": None, "checkpoint": None,
            "resources": {"spot": None, "cpus": None}}
    assert load_spec(data) == JobSpec(run="x")
    assert load_spec({"run": "x", "resources": None}) == JobSpec(run="x")


@pytest.mark.parametrize(
    ("memory", "expected"),
    [
        ("16GB", 16 * 10**9),
        ("16GiB", 16 * 2**30),
        ("512m", 512 * 10**6),
        ("512Mi", 512 * 2**20),
        ("2g", 2 * 10**9),
        ("1.5GB", 1_500_000_000),
        ("10 KiB", 10 * 1024),
        ("1TiB", 2**40),
        ("7b", 7),
        ("100", 100),
        (1024, 1024),
        (2.0**33, 2**33),
    ],
)
def test_memory_sizes_are_parsed_to_bytes(memory: Any, expected: int) -> None:
    assert load_spec({"run": "x", "resources": {"memory": memory}}).resources.memory == expected


@pytest.mark.parametrize(
    ("gpus", "count", "model"),
    [
        ("A100:8", 8, "A100"),
        ("A100-80GB:2", 2, "A100-80GB"),
        ("H100", 1, "H100"),  # a model alone means one
        ("4", 4, None),
        (2, 2, None),
        (0, 0, None),
    ],
)
def test_gpus_take_the_skypilot_form(gpus: Any, count: int, model: str | None) -> None:
    resources = load_spec({"run": "x", "resources": {"gpus": gpus}}).resources
    assert (resources.gpus, resources.gpu_model) == (count, model)


@pytest.mark.parametrize(
    ("value", "expected"), [(1, "1"), (0.001, "0.001"), (True, "true"), (False, "false"), ("text", "text")]
)
def test_env_values_become_strings(value: Any, expected: str) -> None:
    assert load_spec({"run": "x", "env": {"SOME_VAR": value}}).env == {"SOME_VAR": expected}


# --- refusals: each names the field path and the reason ----------------------------------------------------


@pytest.mark.parametrize("data", [None, "run: python train.py", ["run"], 5, b"run"], ids=repr)
def test_a_spec_that_is_not_a_mapping_is_refused(data: Any) -> None:
    exc = _refused(data)
    assert exc.field is None
    assert "mapping" in exc.message


@pytest.mark.parametrize(
    ("data", "field", "suggestion"),
    [
        ({"run": "x", "resorces": {"gpus": 1}}, "resorces", "'resources'"),
        ({"run": "x", "resources": {"gpu": 1}}, "resources.gpu", "'gpus'"),
        ({"run": "x", "retry": {"max_attempt": 2}}, "retry.max_attempt", "'max_attempts'"),
        ({"run": "x", "envs": {}}, "envs", "'env'"),
        ({"rnu": "x"}, "rnu", "'run'"),
    ],
)
def test_unknown_keys_suggest_the_close_one(data: dict[str, Any], field: str, suggestion: str) -> None:
    _refused_at(data, field, "unknown key", f"did you mean {suggestion}?")


@pytest.mark.parametrize(
    ("data", "field", "known"),
    [
        ({"run": "x", "zzzqqq": 1}, "zzzqqq", "resources"),
        ({"run": "x", "resources": {"qqq": 1}}, "resources.qqq", "cpus"),
    ],
)
def test_unknown_keys_with_no_close_one_list_the_known_keys(data: dict[str, Any], field: str, known: str) -> None:
    _refused_at(data, field, "unknown key", "known keys:", known)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"run": 5}, "run"),
        ({"run": ["python", "train.py"]}, "run"),
        ({"run": "x", "name": 3}, "name"),
        ({"run": "x", "resources": "big"}, "resources"),
        ({"run": "x", "resources": {"cpus": "many"}}, "resources.cpus"),
        ({"run": "x", "resources": {"gpus": 1.5}}, "resources.gpus"),
        ({"run": "x", "resources": {"gpus": True}}, "resources.gpus"),
        ({"run": "x", "retry": {"on_failure": "sometimes"}}, "retry.on_failure"),
        ({"run": "x", "retry": 3}, "retry"),
        ({"run": "x", "priority": 1.5}, "priority"),
        ({"run": "x", "env": ["A=1"]}, "env"),
        ({"run": "x", "env": {1: "x"}}, "env"),
        ({"run": "x", "env": {"A": ["1"]}}, "env.A"),
        ({"run": "x", "env": {"A": {"b": 1}}}, "env.A"),
        ({"run": "x", "env": {"A": None}}, "env.A"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_wrong_types_are_refused_at_their_path(data: dict[str, Any], field: str) -> None:
    exc = _refused_at(data, field)
    assert "`" not in exc.field, "the path is clean, with no msgspec syntax"  # type: ignore[operator]


@pytest.mark.parametrize("data", [{}, {"name": "x"}, {"run": None}], ids=repr)
def test_run_is_required(data: dict[str, Any]) -> None:
    _refused_at(data, "run")


@pytest.mark.parametrize("run", ["", "   ", "\n\t"], ids=repr)
def test_run_cannot_be_empty(run: str) -> None:
    _refused_at({"run": run}, "run", "non-empty")


@pytest.mark.parametrize(
    ("resources", "field", "reason"),
    [
        ({"gpus": -1}, "resources.gpus", "negative"),
        ({"gpus": "A100:-1"}, "resources.gpus", "GPU count"),
        ({"gpus": "A100:x"}, "resources.gpus", "GPU count"),
        ({"gpus": "A100:²"}, "resources.gpus", "GPU count"),  # a digit to str.isdigit, not to int()
        ({"gpus": ""}, "resources.gpus", "GPU count"),
        ({"gpus": ":"}, "resources.gpus", "GPU count"),
        ({"cpus": 0}, "resources.cpus", "greater than 0"),
        ({"cpus": -2}, "resources.cpus", "greater than 0"),
        ({"cpus": float("nan")}, "resources.cpus", "greater than 0"),
        ({"memory": 0}, "resources.memory", "greater than 0"),
        ({"memory": -5}, "resources.memory", "greater than 0"),
        ({"memory": "lots"}, "resources.memory", "size such as 16GB"),
        ({"memory": "16XB"}, "resources.memory", "size such as 16GB"),
        ({"memory": "16 G B"}, "resources.memory", "size such as 16GB"),
        ({"memory": "-16GB"}, "resources.memory", "size such as 16GB"),
        ({"memory": "1e3GB"}, "resources.memory", "size such as 16GB"),
        ({"memory": True}, "resources.memory", "size such as 16GB"),
        ({"memory": [16]}, "resources.memory", "size such as 16GB"),
        ({"memory": float("inf")}, "resources.memory", "size such as 16GB"),
        ({"memory": float("nan")}, "resources.memory", "size such as 16GB"),
        ({"memory": "9" * 400 + "TB"}, "resources.memory", ""),  # past float range
        ({"nodes": 0}, "resources.nodes", "at least 1"),
    ],
    ids=repr,
)
def test_bad_resources_are_refused(resources: dict[str, Any], field: str, reason: str) -> None:
    _refused_at({"run": "x", "resources": resources}, field, reason)


def test_retry_needs_at_least_one_attempt() -> None:
    _refused_at({"run": "x", "retry": {"max_attempts": 0}}, "retry.max_attempts", "at least 1")


@pytest.mark.parametrize("name", ["1ABC", "MY-VAR", "A B", "", "Ä", "A=B"], ids=repr)
def test_invalid_env_names_are_refused(name: str) -> None:
    _refused_at({"run": "x", "env": {name: "1"}}, f"env.{name}", "not a valid environment variable name")


@pytest.mark.parametrize("name", ["INCL_JOB_ID", "INCL_METRICS_SOCKET", "INCL_ANYTHING"])
def test_env_cannot_override_incl_variables(name: str) -> None:
    _refused_at({"run": "x", "env": {name: "mine"}}, f"env.{name}", "INCL_", "cannot be overridden")


CANDIDATES = ["x", "", 2, 0.5, True, False, ["x"], {"K": "v"}, {}, "auto", [{"source": "s3://b"}]]


def test_nest_builds_the_path() -> None:
    assert _nest("resources.nodes", 2) == {"run": "python train.py", "resources": {"nodes": 2}}
    assert _nest("image", "x") == {"run": "python train.py", "image": "x"}


# --- the SDK -----------------------------------------------------------------------------------------------


@pytest.fixture
def channel(monkeypatch: pytest.MonkeyPatch) -> Iterator[_sdk._Channel]:
    """A fresh metrics channel per test, closed afterwards (the real one lives as long as the job)."""
    fresh = _sdk._Channel()
    monkeypatch.setattr(_sdk, "_channel", fresh)
    monkeypatch.delenv("INCL_METRICS_SOCKET", raising=False)
    monkeypatch.delenv("INCL_PARAMS", raising=False)
    yield fresh
    if fresh._sock is not None:
        fresh._sock.close()


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A directory whose paths fit a unix socket address (about 100 bytes)."""
    with tempfile.TemporaryDirectory(prefix="incl-", dir="/tmp" if os.path.isdir("/tmp") else None) as path:
        yield path


class _MetricsServer:
    """What the agent runs: a unix stream socket that collects JSON lines."""

    def __init__(self, path: str, max_lines: int | None = None) -> None:
        self.path = path
        self._max_lines = max_lines
        self.lines: list[bytes] = []
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(path)
        self._server.listen(1)
        self._server.settimeout(10)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self._server.accept()
        with conn:
            conn.settimeout(10)
            buffer = b""
            while chunk := conn.recv(65536):
                buffer += chunk
                if self._max_lines is not None and buffer.count(b"\n") >= self._max_lines:
                    break  # the agent goes away
            self.lines = buffer.splitlines()

    def join(self) -> list[bytes]:
        self._thread.join(timeout=10)
        assert not self._thread.is_alive()
        self._server.close()
        return self.lines


def test_sdk_is_a_no_op_outside_incl(channel: _sdk._Channel, capsys: pytest.CaptureFixture[str]) -> None:
    incl.log({"loss": 0.5}, step=1)
    incl.log({"loss": 0.4})
    assert incl.params() == {}
    assert channel._sock is None
    assert capsys.readouterr() == ("", "")


def test_params_come_from_the_environment(channel: _sdk._Channel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INCL_PARAMS", json.dumps({"lr": 0.01, "layers": 4}))
    assert incl.params() == {"lr": 0.01, "layers": 4}


@pytest.mark.parametrize(
    ("values", "step"),
    [
        ({"loss": "high"}, None),
        ({"loss": None}, None),
        ({"loss": [0.5]}, None),
        ({"loss": object()}, None),
        ({"loss": {"a": 1}}, None),
        ([("loss", 0.5)], None),
        ({"loss": 0.5}, 1.5),
        ({"loss": 0.5}, "1"),
        ({"loss": 0.5}, True),
    ],
    ids=lambda v: re.sub(r" at 0x[0-9a-f]+", "", repr(v)),  # the same ids in every pytest-xdist worker
)
def test_log_refuses_what_is_not_a_number(channel: _sdk._Channel, values: Any, step: Any) -> None:
    """Even outside INCL, so a mistake shows on the laptop, not on the cluster."""
    with pytest.raises(TypeError):
        incl.log(values, step=step)


def test_log_sends_json_lines_in_order(
    channel: _sdk._Channel, short_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = _MetricsServer(os.path.join(short_dir, "m.sock"))
    monkeypatch.setenv("INCL_METRICS_SOCKET", server.path)
    before = time.time()
    for step in range(50):
        incl.log({"loss": 1 / (step + 1), "acc": step, "done": step == 49}, step=step)
    incl.log({"final": 0.25})
    after = time.time()
    assert channel._sock is not None
    channel._sock.close()  # the job ends: the agent sees EOF
    records = [json.loads(line) for line in server.join()]

    assert [r["step"] for r in records] == [*range(50), None]
    assert records[0]["values"] == {"loss": 1.0, "acc": 0.0, "done": 0.0}
    assert records[49]["values"] == {"loss": 1 / 50, "acc": 49.0, "done": 1.0}
    assert records[50]["values"] == {"final": 0.25}
    assert all(set(r) == {"ts", "step", "values"} for r in records)
    stamps = [r["ts"] for r in records]
    assert stamps == sorted(stamps) and before <= stamps[0] and stamps[-1] <= after


def test_log_to_a_dead_socket_warns_once_and_goes_quiet(
    channel: _sdk._Channel, short_dir: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("INCL_METRICS_SOCKET", os.path.join(short_dir, "nobody-listens.sock"))
    for step in range(5):
        incl.log({"loss": 0.5}, step=step)
    err = capsys.readouterr().err
    assert err.count("incl:") == 1
    assert "points are kept and sent when it is back" in err
    incl.log({"loss": 0.1})
    assert capsys.readouterr() == ("", "")


def test_log_survives_the_agent_going_away_and_delivers_when_it_is_back(
    channel: _sdk._Channel, short_dir: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The listener closes mid-job (the agent restarts): the job keeps running, log() warns once, and the
    points logged meanwhile reach the new listener at the same path, in order."""
    monkeypatch.setattr(_sdk._Channel, "RETRY_AFTER", 0.0)
    path = os.path.join(short_dir, "m.sock")
    server = _MetricsServer(path, max_lines=1)
    monkeypatch.setenv("INCL_METRICS_SOCKET", server.path)
    incl.log({"loss": 1.0}, step=0)
    assert [json.loads(line)["step"] for line in server.join()] == [0]
    for step in range(1, 200):
        incl.log({"loss": 1.0}, step=step)
    err = capsys.readouterr().err
    assert err.count("incl:") == 1
    os.unlink(path)
    again = _MetricsServer(path)
    incl.log({"loss": 0.0}, step=200)
    assert channel._sock is not None
    channel._sock.close()
    assert [json.loads(line)["step"] for line in again.join()] == list(range(1, 201))


# --- issue 10: new-user defects -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gpus", "reason"),
    [
        ("lots", "is not a GPU count or model"),  # once taken for a GPU model named "lots"
        ("-1", "cannot be negative"),  # `--gpus -1`: once a GPU model named "-1"
        ("0.5", "whole number"),
        (0.5, "whole number"),
        ("A100:0.5", "whole number"),
        (":8", "is not a GPU count or model"),
    ],
)
def test_a_gpus_value_that_is_no_count_or_model_is_refused_at_parse_time(gpus: Any, reason: str) -> None:
    _refused_at({"run": "x", "resources": {"gpus": gpus}}, "resources.gpus", reason)


@pytest.mark.parametrize("gpus", [("A100", 1, "A100"), ("A100:8", 8, "A100"), (2, 2, None), ("2", 2, None),
                                  ("L40S", 1, "L40S"), ("RTX4090:2", 2, "RTX4090"), (2.0, 2, None)], ids=str)
def test_the_documented_gpus_forms_still_parse(gpus: tuple[Any, int, str | None]) -> None:
    resources = load_spec({"run": "x", "resources": {"gpus": gpus[0]}}).resources
    assert (resources.gpus, resources.gpu_model) == gpus[1:]


@pytest.mark.parametrize("workdir", ["/", "//", "/./"])
def test_the_filesystem_root_is_refused_as_a_workdir_with_the_true_reason(workdir: str) -> None:
    _refused_at({"run": "x", "workdir": workdir}, "workdir", "whole filesystem")


@pytest.mark.parametrize("workdir", ["/usr", "/etc/", "/home", "/tmp"])
def test_a_system_folder_is_refused_as_a_workdir(workdir: str) -> None:
    _refused_at({"run": "x", "workdir": workdir}, "workdir", "system folder")


def test_a_project_folder_under_a_system_folder_is_a_fine_workdir() -> None:
    assert load_spec({"run": "x", "workdir": "/home/ada/project"}).workdir == "/home/ada/project"


@pytest.mark.parametrize(("data", "field", "words"), [
    ({"resources": {"nodes": 0}}, "resources.nodes", "at least 1"),
    ({"resources": {"nodes": "two"}}, "resources.nodes", "expected `int`"),
    ({"resources": {"nodes": 1000}}, "resources.nodes", "more than the 256"),
    ({"resources": {"nodes": 2}, "outputs": {"ranks": "some"}}, "outputs.ranks", "a rank number"),
    ({"resources": {"nodes": 2}, "outputs": {"ranks": 2}}, "outputs.ranks", "from 0 to 1, or all"),
])
def test_bad_multi_node_input_is_one_line_naming_the_field(data: dict[str, Any], field: str, words: str) -> None:
    _refused_at({"run": "x", **data}, field, words)


def test_a_multi_node_spec_loads() -> None:
    spec = load_spec({"run": "torchrun train.py", "resources": {"nodes": 2, "gpus": "H100:8"},
                      "outputs": {"ranks": "all"}})
    assert (spec.resources.nodes, spec.resources.gpus, spec.outputs.ranks) == (2, 8, "all")


# --- gpu_idle, notify: typed here, for the CLI and the controller alike ---------------------------------


def test_gpu_idle_takes_a_mapping_of_durations_and_a_percentage_or_false() -> None:
    spec = load_spec({"run": "x", "gpu_idle": {"threshold": "20%", "window": "15m", "action": "stop", "grace": 0}})
    assert spec.gpu_idle == GpuIdle(threshold=20, window=900, action=IdleAction.STOP, grace=0)
    assert load_spec({"run": "x", "gpu_idle": {"window": 90}}).gpu_idle == GpuIdle(window=90)
    assert load_spec({"run": "x", "gpu_idle": False}).gpu_idle is False
    assert load_spec({"run": "x", "gpu_idle": True}).gpu_idle is None  # the cluster's policy
    assert load_spec({"run": "x", "gpu_idle": None}).gpu_idle is None


def test_notify_takes_a_channel_a_webhook_a_mapping_or_false() -> None:
    url = "https://hooks.slack.com/services/T0/B0/x"
    assert load_spec({"run": "x", "notify": "#ml-alerts"}).notify == Notify(channel="ml-alerts")
    assert load_spec({"run": "x", "notify": url}).notify == Notify(webhook=url)
    spec = load_spec({"run": "x", "notify": {"webhook": url, "events": ["failed", "idle"]}})
    assert spec.notify == Notify(webhook=url, events=frozenset({NotifyEvent.FAILED, NotifyEvent.IDLE}))
    assert load_spec({"run": "x", "notify": {"events": "all"}}).notify == Notify(events=frozenset(NotifyEvent))
    assert load_spec({"run": "x", "notify": False}).notify == Notify(events=frozenset())
    assert url not in repr(spec) and "hooks.slack.com" in repr(spec)  # the URL is a secret


@pytest.mark.parametrize(
    ("section", "value", "field", "words"),
    [
        ("gpu_idle", {"treshold": 10}, "gpu_idle.treshold", "did you mean 'threshold'?"),
        ("gpu_idle", {"action": "kill"}, "gpu_idle.action", "must be one of notify, stop, not 'kill'"),
        ("gpu_idle", {"threshold": 0}, "gpu_idle.threshold", "above 0"),
        ("gpu_idle", {"window": "soon"}, "gpu_idle.window", "duration"),
        ("gpu_idle", "15m", "gpu_idle", "mapping"),
        ("notify", {"webhok": "https://hooks.slack.com/x"}, "notify.webhok", "did you mean 'webhook'?"),
        ("notify", {"chanel": "ml"}, "notify.chanel", "did you mean 'channel'?"),
        ("notify", {"channel": 5}, "notify.channel", "expected `str | null`"),
        ("notify", {"events": ["failed", "succeded"]}, "notify.events", "did you mean 'succeeded'?"),
        ("notify", {"webhook": "ftp://x/y"}, "notify.webhook", "http(s) URL"),
        ("notify", ["ml"], "notify", "expected a mapping"),
    ],
    ids=repr,
)
def test_gpu_idle_and_notify_are_checked_whole(section: str, value: Any, field: str, words: str) -> None:
    """Each is refused at its path with the reason, before any "not supported yet"."""
    _refused_at({"run": "x", section: value}, field, words)


def test_a_decoded_spec_gets_the_same_checks_as_a_loaded_one() -> None:
    """What the controller runs on a spec off the wire (types already checked by the decoder)."""
    with pytest.raises(SpecInvalid) as info:
        check_spec(JobSpec(run="x", notify=Notify(webhook="hooks.slack.com/services/secret")))
    assert info.value.field == "notify.webhook" and "secret" not in str(info.value)
    with pytest.raises(SpecInvalid) as info:
        check_spec(JobSpec(run="x", gpu_idle=GpuIdle(window=float("inf"))))
    assert info.value.field == "gpu_idle.window"
    assert check_spec(JobSpec(run="x", gpu_idle=False, notify=Notify(channel="ml"))).notify == Notify(channel="ml")
