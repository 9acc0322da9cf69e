"""What a new user meets on the command line (issue 10): bad specs refused in one line before anything is
uploaded, the current folder as the default workdir, tables that fit a terminal and are never cut when piped,
user text never read as markup, and NaN metrics kept as what they are."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from conftest import Cluster

from incl.proto.messages import JobState

PY = sys.executable
NOWHERE = "nats://127.0.0.1:1"  # a refusal must come before the CLI talks to anything
ANSI = re.compile(r"\x1b\[[0-9;]*m")
MARKUP_COMMAND = 'python3 -c "import sys; [print(i) for i in x]; sys.exit(1)"'


def incl(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
         url: str = NOWHERE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "incl.cli", "--nats", url, *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env={**os.environ, **(env or {})})


def one_line_error(out: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert out.returncode == code, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    return out.stderr


def test_a_spec_that_is_not_utf8_is_refused_in_one_line(tmp_path: Path) -> None:
    spec = tmp_path / "incl.yaml"
    spec.write_bytes(b"run: echo \xff\xfe\n")
    assert "spec is not UTF-8 text at byte 10" in one_line_error(incl("submit", "-f", str(spec)))


def test_a_10_mb_spec_is_refused_at_once_naming_its_size_and_the_limit(tmp_path: Path) -> None:
    spec = tmp_path / "incl.yaml"
    spec.write_text("run: echo hi\n" + "# padding\n" * 1_000_000)
    started = time.monotonic()
    err = one_line_error(incl("submit", "-f", str(spec)))
    assert time.monotonic() - started < 10  # was 19 s of YAML parsing, then a MaxPayloadError traceback
    assert "spec is 10.0 MB, over the 1 MB limit" in err


def test_gpus_that_are_no_count_or_model_are_refused_before_any_upload(tmp_path: Path) -> None:
    for args in (["--gpus", "-1"], ["--gpus", "0.5"], ["--gpus", "lots"]):
        err = one_line_error(incl("submit", *args, "--", "true", cwd=tmp_path))
        assert "resources.gpus:" in err, (args, err)
    spec = tmp_path / "incl.yaml"
    spec.write_text('run: "true"\nresources: {gpus: "lots"}\n')
    err = one_line_error(incl("submit", "-f", str(spec)))
    assert "resources.gpus: 'lots' is not a GPU count or model" in err


def test_the_filesystem_root_as_workdir_is_refused_with_the_true_reason(tmp_path: Path) -> None:
    err = one_line_error(incl("submit", "--workdir", "/", "--", "true", cwd=tmp_path))
    assert "workdir: is the whole filesystem (/)" in err and "symlink" not in err


def test_a_command_line_submit_from_the_home_folder_is_refused_before_uploading_it(tmp_path: Path) -> None:
    err = one_line_error(incl("submit", "--", "true", cwd=tmp_path, env={"HOME": str(tmp_path)}))
    assert "is your home folder" in err and "--no-workdir" in err


async def test_a_command_line_submit_uploads_the_current_folder_unless_told_not_to(cluster: Cluster,
                                                                                   tmp_path: Path) -> None:
    cluster.start_controller()
    await cluster.wait_controller()
    cluster.start_agent("a1")
    await cluster.wait_agents(1)
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("print('trained from', __file__.rsplit('/', 1)[-1])\n")
    out = incl("submit", "--follow", "--", "python3", "train.py", cwd=project, url=cluster.nats.url)
    assert out.returncode == 0, out.stderr
    assert "trained from train.py" in out.stdout
    out = incl("submit", "--no-workdir", "--follow", "--", "python3", "train.py", cwd=project, url=cluster.nats.url)
    assert out.returncode != 0 and "can't open file" in out.stdout + out.stderr, (out.stdout, out.stderr)


async def test_empty_listings_say_so_and_priority_takes_a_class_name(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_controller()
    await cluster.wait_controller()
    out = incl("ls", url=cluster.nats.url)
    assert out.returncode == 0 and out.stdout.startswith("no jobs"), out.stdout
    out = incl("agents", url=cluster.nats.url)
    assert out.returncode == 0 and out.stdout.strip() == "no agents registered", out.stdout
    out = incl("submit", "--no-workdir", "--priority", "high", "--json", "--", "true", url=cluster.nats.url)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["spec"]["priority"] == "high"
    out = incl("submit", "--no-workdir", "--priority", "5", "--json", "--", "true", url=cluster.nats.url)
    assert out.returncode == 0 and json.loads(out.stdout)["spec"]["priority"] == 5, out.stderr


async def test_user_text_is_never_read_as_markup_and_tables_are_not_cut(cluster: Cluster, tmp_path: Path) -> None:
    """The exact command, brackets included, in `show` and `ls`; piped, every header and reason whole on one
    line; at 80 columns on a terminal, lines fit and headers are never cut."""
    cluster.start_controller()
    await cluster.wait_controller()
    cluster.start_agent("a1")
    job = await cluster.submit(MARKUP_COMMAND, name="[bold]markup[/bold]")
    done = await cluster.wait_done(job.id)
    assert done.state is JobState.FAILED
    shown = incl("show", job.id, url=cluster.nats.url)
    assert shown.returncode == 0, shown.stderr
    assert MARKUP_COMMAND in shown.stdout and "[bold]markup[/bold]" in shown.stdout
    assert "NameError: name 'x' is not defined" in shown.stdout
    header = next(line for line in shown.stdout.splitlines() if line.strip().startswith("#"))
    assert header.split() == ["#", "AGENT", "STATE", "ASSIGNED", "STARTED", "ENDED", "RUNTIME", "EXIT", "REASON"]
    listed = incl("ls", url=cluster.nats.url)
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "USER", "STATE", "ATTEMPT", "AGENT", "SUBMITTED", "RUNTIME", "GPU",
                                "REASON"]
    assert "[bold]markup[/bold]" in lines[1] and "exit code 1" in lines[1]
    terminal = {"TTY_COMPATIBLE": "1", "COLUMNS": "80"}
    for args, headers in ((["ls"], "ID "), (["show", job.id], "# "), (["agents"], "ID ")):
        out = incl(*args, url=cluster.nats.url, env=terminal)
        assert out.returncode == 0, out.stderr
        lines = ANSI.sub("", out.stdout).splitlines()
        assert all(len(line) <= 80 for line in lines), out.stdout
        header = next(line for line in lines if line.lstrip().startswith(headers))
        assert "…" not in header, header


async def test_metrics_keep_nan_and_infinities_as_what_they_are(cluster: Cluster) -> None:
    cluster.start_controller()
    await cluster.wait_controller()
    cluster.start_agent("a1")
    script = ("import incl\n"
              "for s, v in enumerate([1.0, 0.5, float('nan'), float('inf'), float('-inf')]):\n"
              "    incl.log({'loss': v}, step=s)\n")
    job = await cluster.submit(f'{PY} -c "{script}"')
    assert (await cluster.wait_done(job.id)).state is JobState.SUCCEEDED
    out = incl("metrics", job.id, "--json", url=cluster.nats.url)
    assert out.returncode == 0, out.stderr
    assert [p["values"]["loss"] for p in json.loads(out.stdout)] == [1.0, 0.5, "NaN", "Infinity", "-Infinity"]
    out = incl("metrics", job.id, url=cluster.nats.url)
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.strip().startswith("loss")).split()
    assert row[:6] == ["loss", "-inf", "4", "0.5", "1", "5"]  # last value as it is; min and max of the finite
    assert row[6].endswith("×↑↓")
