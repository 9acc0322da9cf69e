"""`incl model register|ls|show|download|alias`: the model registry (versions made of a job's outputs, aliases)."""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from incl.cli.output import Column, ago, console, handles_errors, plural, print_json, print_table, size
from incl.proto.errors import BadRequest, InclError
from incl.proto.registry import GetModelReply, ModelSummary, ModelVersion, check_name, parse_ref

if TYPE_CHECKING:
    from incl.bus.client import Client

T = TypeVar("T")

LS_COLUMNS = [Column("NAME", shrink=16), Column("VERSIONS", justify="right"), Column("LATEST"),
              Column("ALIASES", drop=2, shrink=20), Column("JOB", drop=3), Column("BY", drop=4),
              Column("REGISTERED", drop=1)]


def with_client(ctx: click.Context, call: Callable[[Client], Awaitable[T]]) -> T:
    from incl.bus.client import Client, resolve_url  # noqa: PLC0415 - lazy: nats, structlog, boto

    async def go() -> T:
        async with Client(resolve_url(ctx.obj["nats_url"])) as client:
            return await call(client)

    return asyncio.run(go())


def version_number(text: str) -> int:
    """`v3` (or `3`) -> 3."""
    match = re.fullmatch(r"v?([1-9][0-9]{0,8})", text)
    if match is None:
        raise BadRequest(f"{text!r} is not a version: write it v1, v2, ...")
    return int(match[1])


def aliases_cell(aliases: dict[str, int]) -> str:
    return ", ".join(f"{a}→v{v}" for a, v in sorted(aliases.items())) or "-"


def ls_rows(models: list[ModelSummary]) -> list[list[str]]:
    return [[m.name, str(m.versions), f"v{m.latest.version}", aliases_cell(m.aliases), m.latest.lineage.job_id,
             m.latest.registered_by, ago(m.latest.registered_at)] for m in models]


def show_lines(reply: GetModelReply, files: list[tuple[str, int]]) -> list[str]:
    """What `incl model show` prints: the version, its lineage, the model's versions and aliases, its files."""
    v = reply.version
    lin = v.lineage
    here = [a for a, n in sorted(reply.aliases.items()) if n == v.version]
    lines = [f"{v.name} v{v.version}" + (f" ({', '.join('@' + a for a in here)})" if here else ""),
             f"  registered   {ago(v.registered_at)} by {v.registered_by}",
             f"  job          {lin.job_id} ({lin.job_name}, {lin.job_state}), attempt {lin.attempt}, "
             f"submitted by {lin.user}"]
    if v.note:
        lines.append(f"  note         {v.note}")
    lines.append(f"  image        {lin.image or '- (process runtime)'}")
    lines.append(f"  code         {lin.code.digest[:12] if lin.code else '-'}")
    if lin.study_id:
        lines.append(f"  study        {lin.study_id}")
    if lin.params:
        lines.append("  params       " + " ".join(f"{k}={p}" for k, p in lin.params.items()))
    if lin.env:
        lines.append("  env          " + " ".join(f"{k}={e}" for k, e in sorted(lin.env.items())))
    lines.append("  metrics      " + (" ".join(f"{k}={m:.6g}" for k, m in lin.metrics.items()) or "-"))
    lines.append(f"  versions     {', '.join(f'v{n}' for n in reply.versions)}")
    lines.append(f"  aliases      {aliases_cell(reply.aliases)}")
    chosen = f" (chosen: {', '.join(v.paths)})" if v.paths else ""
    lines.append(f"  files        {plural(v.tree.files, 'file')}, {size(v.tree.bytes)}{chosen}")
    lines += [f"    {path}  {size(n)}" for path, n in files]
    return lines


async def version_files(client: Client, version: ModelVersion) -> list[tuple[str, int]]:
    from incl.artifacts.store import open_store  # noqa: PLC0415 - lazy: nats, structlog, boto
    from incl.cli.files import output_files  # noqa: PLC0415 - lazy: rich's progress bars

    async with open_store(await client.store_url()) as store:
        return [(e.path, e.size) for e in await output_files(store, [("", version.tree)])]


@click.group()
def model() -> None:
    """The model registry: immutable, numbered versions of a finished job's outputs, with lineage and aliases."""


@model.command()
@click.argument("name")
@click.option("--job", "job_id", required=True, help="The finished job whose outputs become the version.")
@click.option("--path", "paths", multiple=True,
              help="An output file or folder (folder/) to register instead of all outputs; repeatable.")
@click.option("--alias", help="Point this alias (e.g. production) at the new version.")
@click.option("--note", help="A line of text kept with the version.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def register(ctx: click.Context, name: str, job_id: str, paths: tuple[str, ...], alias: str | None,
             note: str | None, as_json: bool) -> None:
    """Register a job's outputs as the next version of model NAME (no copy: the version names the same blobs).
    NAME: a letter or digit, then letters, digits, '-', '_', '.'."""
    check_name(name)
    if alias is not None:
        check_name(alias, "alias")
    version = with_client(ctx, lambda c: c.register_model(name, job_id, list(paths), alias, note))
    if as_json:
        print_json(version)
        return
    console.print(f"registered {version.name} v{version.version} from job {job_id}: "
                  f"{plural(version.tree.files, 'file')}, {size(version.tree.bytes)}"
                  + (f"; @{alias} -> v{version.version}" if alias else ""), markup=False, highlight=False)


@model.command("ls")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def ls(ctx: click.Context, as_json: bool) -> None:
    """Every model: its number of versions, the latest, its aliases."""
    models = with_client(ctx, lambda c: c.models())
    if as_json:
        print_json(models)
    elif not models:
        console.print("no models; register one with `incl model register NAME --job JOB`", markup=False)
    else:
        print_table(LS_COLUMNS, ls_rows(models))


@model.command()
@click.argument("ref", metavar="NAME[:vN|@ALIAS]")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def show(ctx: click.Context, ref: str, as_json: bool) -> None:
    """A version's lineage (job, attempt, code, image, params, final metrics, who registered it) and files."""
    wanted = parse_ref(ref)

    async def call(c: Client) -> tuple[GetModelReply, list[tuple[str, int]]]:
        reply = await c.model(wanted)
        return reply, await version_files(c, reply.version)

    reply, files = with_client(ctx, call)
    if as_json:
        print_json({"version": reply.version, "versions": reply.versions, "aliases": reply.aliases,
                    "files": [{"path": p, "size": n} for p, n in files]})
        return
    console.print("\n".join(show_lines(reply, files)), markup=False, highlight=False)


@model.command()
@click.argument("ref", metavar="NAME[:vN|@ALIAS]")
@click.option("--to", "dest", type=click.Path(file_okay=False), help="Folder to write into (default: ./NAME-vN).")
@click.pass_context
@handles_errors
def download(ctx: click.Context, ref: str, dest: str | None) -> None:
    """Download a version's files, byte for byte as the job wrote them."""
    from incl.artifacts.store import open_store  # noqa: PLC0415 - lazy: nats, structlog, boto
    from incl.cli.files import pull_outputs  # noqa: PLC0415 - lazy: rich's progress bars
    wanted = parse_ref(ref)

    async def call(c: Client) -> tuple[ModelVersion, Path]:
        version = (await c.model(wanted)).version
        target = Path(dest or f"{version.name}-v{version.version}")
        if target.exists() and any(target.iterdir()):  # noqa: ASYNC240 - a local check before any download
            raise InclError(f"{target} is not empty; choose another folder with --to")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".incl-download-") as blobs:
            async with open_store(await c.store_url()) as store:
                await pull_outputs(store, [("", version.tree)], target, Path(blobs),
                                   f"{version.name} v{version.version}")
        return version, target

    version, target = with_client(ctx, call)
    click.echo(f"downloaded {version.name} v{version.version} into {target}")


@model.command("alias")
@click.argument("name")
@click.argument("version")
@click.argument("alias")
@click.pass_context
@handles_errors
def alias_cmd(ctx: click.Context, name: str, version: str, alias: str) -> None:
    """Point ALIAS of model NAME at VERSION (vN), moving it if it named another; versions never change."""
    check_name(name)
    check_name(alias, "alias")
    number = version_number(version)
    reply = with_client(ctx, lambda c: c.alias_model(name, number, alias))
    moved = f" (was v{reply.previous})" if reply.previous is not None and reply.previous != number else ""
    click.echo(f"{name}@{alias} -> v{number}{moved}")
