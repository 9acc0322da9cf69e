"""`incl submit`: a job from `incl.yaml` and/or flags and `-- CMD...`; a spec with `hpo:` submits a study."""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import msgspec
import yaml

from incl.cli.files import upload_workdir
from incl.cli.logs import follow_logs
from incl.cli.output import EXIT_USAGE, console, fail, handles_errors, print_json
from incl.proto.errors import SpecInvalid
from incl.proto.messages import JobState
from incl.proto.spec import MAX_SPEC_BYTES, JobSpec, load_spec, parse_size

if TYPE_CHECKING:
    pass


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as exc:
        raise SpecInvalid(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecInvalid(f"{path} must hold a mapping of keys to values")
    return data


def _read_text(path: Path) -> str:
    """The spec file's text; refused before it is parsed if it is too big to send or not UTF-8."""
    try:
        with path.open("rb") as f:
            if (n := os.fstat(f.fileno()).st_size) > MAX_SPEC_BYTES:
                raise SpecInvalid(f"spec is {n / 1e6:.1f} MB, over the {MAX_SPEC_BYTES / 1e6:g} MB limit ({path})")
            raw = f.read(MAX_SPEC_BYTES + 1)  # a file that grows while read (or a pipe) is capped all the same
    except OSError as exc:
        raise SpecInvalid(f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecInvalid(f"spec is over the {MAX_SPEC_BYTES / 1e6:g} MB limit ({path})")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecInvalid(f"spec is not UTF-8 text at byte {exc.start} ({path})") from None


def build_spec(file: str | None, command: tuple[str, ...], flags: dict[str, Any]) -> JobSpec:
    """The YAML (if any), overridden by flags; relative workdirs resolve against the YAML's folder."""
    data: dict[str, Any] = {}
    base = Path.cwd()
    if file:
        path = Path(file)
        data = _read_yaml(path)
        base = path.resolve().parent
    if command:
        data["run"] = shlex.join(command) if len(command) > 1 else command[0]
        if not file and flags.get("workdir") is None and not flags.get("no_workdir"):
            data["workdir"] = "."  # a command-line submit runs in the folder it was typed in
    if flags.get("no_workdir"):
        if flags.get("workdir") is not None:
            raise SpecInvalid("--workdir and --no-workdir cannot both be given", field="workdir")
        data.pop("workdir", None)
    for key in ("name", "setup", "priority", "workdir", "image"):
        if flags.get(key) is not None:
            data[key] = flags[key]
    resources = dict(data.get("resources") or {}) if isinstance(data.get("resources"), dict) else None
    for key in ("cpus", "memory", "gpus"):
        if flags.get(key) is not None:
            resources = resources if resources is not None else {}
            resources[key] = flags[key]
    if resources is not None:
        data["resources"] = resources
    if flags.get("retry") is not None:
        given = data.get("retry")
        retry = given if isinstance(given, dict) else {}
        data["retry"] = {**retry, "max_attempts": flags["retry"]}
    if flags.get("env"):
        env = dict(data.get("env") or {}) if isinstance(data.get("env"), dict) else {}
        for item in flags["env"]:
            key, sep, value = item.partition("=")
            if not sep:
                raise SpecInvalid(f"--env takes KEY=VALUE, got {item!r}", field="env")
            env[key] = value
        data["env"] = env
    if isinstance(data.get("workdir"), str) and data["workdir"].strip():
        data["workdir"] = _workdir(base, data["workdir"])
    if "run" not in data:
        raise SpecInvalid("is required: give it in incl.yaml or after `--` on the command line", field="run")
    return _within_limit(load_spec(data))


def _within_limit(spec: JobSpec) -> JobSpec:
    """A spec is sent in one message: one too big for it is refused here, not by the bus after the upload."""
    if (n := len(msgspec.msgpack.encode(spec))) > MAX_SPEC_BYTES:
        raise SpecInvalid(f"spec is {n / 1e6:.1f} MB, over the {MAX_SPEC_BYTES / 1e6:g} MB limit")
    return spec


def _workdir(base: Path, workdir: str) -> str:
    """An absolute workdir; the home folder itself (all of a user's files) is no project."""
    path = (base / workdir).resolve()
    if path == Path.home().resolve():
        raise SpecInvalid(f"{path} is your home folder, not a project folder: run from your project's folder, "
                          "name it with --workdir DIR, or pass --no-workdir", field="workdir")
    return str(path)


def _priority(value: str) -> int | str:
    """`--priority 5` is a rank, `--priority high` a priority class, as in the spec."""
    try:
        return int(value)
    except ValueError:
        return value


@click.command(context_settings={"ignore_unknown_options": False})
@click.option("-f", "--file", "file", type=click.Path(dir_okay=False), help="Job spec (incl.yaml).")
@click.option("--name")
@click.option("--workdir", help="Folder whose contents the job starts in (default with `-- CMD`: this folder).")
@click.option("--no-workdir", "no_workdir", is_flag=True, help="Upload no folder; the job starts in an empty one.")
@click.option("--setup", help="Command run before the job's command.")
@click.option("--image", help="Docker image to run the job in (default: processes on the agent's host).")
@click.option("--env", "env", multiple=True, metavar="KEY=VALUE", help="Environment variable (repeatable).")
@click.option("--cpus", type=float)
@click.option("--memory", help="e.g. 16GB")
@click.option("--gpus", help="Count, MODEL (one of it) or MODEL:COUNT such as A100:8.")
@click.option("--priority", help="A priority class (high, normal, low or the admin's) or a rank (an integer).")
@click.option("--retry", type=int, help="Attempts in all if the agent is lost (retry.max_attempts).")
@click.option("--user", help="Submit as this user (default: the user your credentials name, else $INCL_USER or "
              "your login).")
@click.option("--max-workdir-size", "max_workdir_size", envvar="INCL_MAX_WORKDIR_SIZE", default="2GB",
              show_default=True, help="Refuse a workdir snapshot bigger than this (list big files in .inclignore).")
@click.option("--follow", is_flag=True, help="Stream the job's logs until it ends; exit with its status.")
@click.option("--json", "as_json", is_flag=True, help="Print the job (or study) record as JSON.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
@handles_errors
def submit(ctx: click.Context, /, file: str | None, command: tuple[str, ...], user: str | None, follow: bool,
           as_json: bool, max_workdir_size: str, **flags: Any) -> None:
    """Submit a job: `incl submit -f incl.yaml` or `incl submit [OPTIONS] -- CMD...`. A spec with an `hpo:`
    section submits a study, whose trials are jobs; its id is printed."""
    from incl.bus.client import Client, resolve_url  # noqa: PLC0415 - lazy: nats, structlog, boto
    if file is None and not command and Path("incl.yaml").exists():
        file = "incl.yaml"
    if flags.get("gpus") is not None and str(flags["gpus"]).isdigit():
        flags["gpus"] = int(flags["gpus"])
    if flags.get("priority") is not None:
        flags["priority"] = _priority(flags["priority"])
    spec = build_spec(file, command, flags)
    try:
        max_workdir = parse_size(max_workdir_size)
    except ValueError as exc:
        raise SpecInvalid(str(exc), field="--max-workdir-size") from None
    if spec.hpo is not None and follow:
        fail("--follow follows a job; follow a study with `incl study show ID`", EXIT_USAGE)
    url = resolve_url(ctx.obj["nats_url"])

    async def go() -> int:
        async with Client(url) as client:
            code = await upload_workdir(client, spec.workdir, max_workdir) if spec.workdir else None
            if spec.hpo is not None:
                study = await client.submit_study(spec, user, code=code)
                if as_json:
                    print_json(study)
                else:
                    click.echo(study.id)
                return 0
            job = await client.submit(spec, user, code=code)
            if as_json:
                print_json(job)
            else:
                click.echo(job.id)
            if not follow:
                return 0
            final = await follow_logs(client, job)
            if final.state is not JobState.SUCCEEDED:
                console.print(f"job {job.id} {final.state}: {final.reason or ''}", style="red", highlight=False,
                              markup=False)
                return final.exit_code if final.exit_code not in (None, 0) else 1
            return 0

    sys.exit(asyncio.run(go()))


