"""The layout holds (issue 11's definition of done), read from the source with `ast`: only `bus/` speaks NATS,
`proto/` and the job-side SDK depend on nothing of ours, the CLI is used only as a program, the agent never
touches the controller's buckets, and the CLI reads streams only through the Client library.

Each check lists every offending file:line, so a failure says what to move where."""

from __future__ import annotations

import ast
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from incl.proto import subjects

ROOT = Path(__file__).resolve().parents[2]
# Folder -> the package it installs as (`incl.proto` from `proto/`, `incl` from `sdk/`), from pyproject.toml.
_PACKAGE_DIRS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
PACKAGES: dict[tuple[str, ...], str] = {tuple(folder.split("/")): package for package, folder in _PACKAGE_DIRS.items()}
SKIP = {"__pycache__", "build", "dist", "node_modules"}
STDLIB = sys.stdlib_module_names
BUCKETS = {"JOBS_BUCKET": subjects.JOBS_BUCKET, "AGENTS_BUCKET": subjects.AGENTS_BUCKET,
           "SUBMITS_BUCKET": subjects.SUBMITS_BUCKET}


def python_files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.name in SKIP or path.name.endswith(".egg-info"):
            continue
        if path.is_dir():
            yield from python_files(path)
        elif path.suffix == ".py":
            yield path


@cache
def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"


def in_folder(path: Path, folder: str) -> bool:
    return path.relative_to(ROOT).parts[0] == folder


def package_of(path: Path) -> str | None:
    """The dotted package an installed file belongs to (`bus/kv.py` -> `incl.bus`), None for tests and the
    like; the deepest folder pyproject.toml names wins (`controller/providers/`)."""
    parts = path.relative_to(ROOT).parts[:-1]
    for n in range(len(parts), 0, -1):
        if parts[:n] in PACKAGES:
            return ".".join([PACKAGES[parts[:n]], *parts[n:]])
    return None


ALL = list(python_files(ROOT))  # the packages, tests, benchmarks, examples, scripts
SOURCE = [p for p in ALL if package_of(p) is not None]  # what `pip install incl` installs


@dataclass(frozen=True)
class Import:
    at: str  # file:line
    module: str  # absolute, with the imported name: `from incl.proto import subjects` -> incl.proto.subjects

    @property
    def top(self) -> str:
        return self.module.split(".")[0]


def imports(path: Path) -> Iterator[Import]:
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(where(path, node), alias.name)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                package = (package_of(path) or ".".join(path.relative_to(ROOT).parts[:-1])).split(".")
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{module}" if module else base
            for alias in node.names:
                yield Import(where(path, node), module if alias.name == "*" else f"{module}.{alias.name}")


def under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_walk_sees_the_source() -> None:
    """The checks below are not vacuous: the walk finds every package, and bus/'s own nats imports."""
    assert set(PACKAGES.values()) <= {package_of(p) for p in SOURCE}
    assert any(i.top == "nats" for p in SOURCE if in_folder(p, "bus") for i in imports(p))


def test_only_bus_imports_nats() -> None:
    offending = [i.at for p in ALL if not in_folder(p, "bus") for i in imports(p) if i.top == "nats"]
    assert not offending, f"nats imported outside bus/ (use incl.bus): {offending}"


def test_proto_imports_only_the_standard_library_msgspec_and_itself() -> None:
    offending = [f"{i.at} {i.module}" for p in SOURCE if in_folder(p, "proto") for i in imports(p)
                 if not (i.top in STDLIB or i.top == "msgspec" or under(i.module, "incl.proto"))]
    assert not offending, f"proto/ must depend on nothing but the standard library and msgspec: {offending}"


def test_the_job_side_sdk_imports_only_the_standard_library() -> None:
    """`import incl` runs inside the user's job, in whatever environment it has."""
    own = {p.stem for p in (ROOT / "sdk").iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    offending = [f"{i.at} {i.module}" for p in SOURCE if in_folder(p, "sdk") for i in imports(p)
                 if not (i.top in STDLIB or any(under(i.module, f"incl.{m}") for m in own))]
    assert not offending, f"sdk/ must import only the standard library: {offending}"


def test_the_cli_is_a_program_not_a_library() -> None:
    """The client library is `incl.bus.client`; `incl.cli.client` is gone. Of the installed packages only the
    CLI imports the CLI (its tests may unit-test its modules)."""
    gone = [i.at for p in ALL for i in imports(p) if under(i.module, "incl.cli.client")]
    assert not gone, f"incl.cli.client no longer exists (use incl.bus.client): {gone}"
    offending = [f"{i.at} {i.module}" for p in SOURCE if not in_folder(p, "cli") for i in imports(p)
                 if under(i.module, "incl.cli")]
    assert not offending, f"only cli/ may import incl.cli: {offending}"


def test_the_agent_never_touches_the_controllers_buckets() -> None:
    """The agent asks the controller (request/reply) instead of reading its records."""
    offending = []
    for path in SOURCE:
        if not in_folder(path, "agent"):
            continue
        for node in ast.walk(tree(path)):
            named = (node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute)
                     else None)
            if named in BUCKETS:
                offending.append(f"{where(path, node)} {named}")
            elif isinstance(node, ast.alias) and node.name in BUCKETS:
                offending.append(f"{where(path, node)} import {node.name}")
            elif isinstance(node, ast.Constant) and node.value in BUCKETS.values():
                offending.append(f"{where(path, node)} {node.value!r}")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "bucket":
                offending.append(f"{where(path, node)} .bucket(...)")
    assert not offending, f"agent/ reads the controller's buckets: {offending}"


def test_the_cli_reads_streams_only_through_the_client() -> None:
    offending = [f"{where(path, node)} .{node.func.attr}(...)"
                 for path in SOURCE if in_folder(path, "cli")
                 for node in ast.walk(tree(path))
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                 and node.func.attr in {"follow", "last", "pull"}]
    assert not offending, f"cli/ reads streams directly (add a Client method in incl.bus.client): {offending}"


def test_optuna_stays_out_of_the_cli_the_agent_and_the_wire() -> None:
    """Optuna loads in the controller and in `incl.hpo` only: the CLI starts fast and the agent stays lean (the
    CLI gets a study's trials and importances from the controller)."""
    offending = [f"{i.at} {i.module}" for p in SOURCE if package_of(p) is not None
                 and not (in_folder(p, "hpo") or in_folder(p, "controller"))
                 for i in imports(p) if i.top == "optuna"]
    assert not offending, f"optuna imported outside hpo/ and controller/: {offending}"
