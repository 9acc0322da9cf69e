"""One spec contract: `incl submit` checks the whole spec with the controller's own code before it uploads or
connects; the controller checks a spec off the wire again with that code, and adds what needs the cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Cluster, free_port

from incl.proto.errors import SpecInvalid
from incl.proto.spec import JobSpec, Notify

WEBHOOK = "https://hooks.slack.com/services/T000/B000/XXXXsecretTOKENxxxx"


def project(tmp_path: Path, notify: str) -> Path:
    """A project folder with code worth uploading and an incl.yaml whose `notify:` is `notify`."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "train.py").write_text("print('training')\n" * 100)
    (root / "incl.yaml").write_text(f"run: python train.py\nworkdir: .\nnotify: {notify}\n")
    return root / "incl.yaml"


def stored_files(cluster: Cluster) -> list[Path]:
    """Every blob and manifest the CLI has uploaded to the cluster's store."""
    store = cluster.tmp / "store"
    return [p for p in store.rglob("*") if p.is_file()] if store.exists() else []


def refused_for_the_typo(out: subprocess.CompletedProcess[str]) -> None:
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "notify.webhok:" in out.stderr and "did you mean 'webhook'?" in out.stderr, out.stderr
    assert WEBHOOK not in out.stderr + out.stdout  # the URL is a secret, even in an error


async def test_a_misspelt_notify_key_is_refused_by_incl_submit_before_anything_is_uploaded(
        cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_controller()
    await cluster.wait_controller()
    spec = project(tmp_path, f"{{webhok: {WEBHOOK}}}")
    refused_for_the_typo(cluster.cli("submit", "-f", str(spec)))
    assert stored_files(cluster) == []
    assert json.loads(cluster.cli("ls", "--json").stdout) == []
    # The same project with the key spelt right is uploaded and queued: the store above was the right place.
    spec.write_text(spec.read_text().replace("webhok", "webhook"))
    out = cluster.cli("submit", "-f", str(spec))
    assert out.returncode == 0, out.stderr
    assert stored_files(cluster)
    [job] = json.loads(cluster.cli("ls", "--json").stdout)
    assert job["id"] == out.stdout.strip()


def test_the_spec_error_comes_before_any_connection(tmp_path: Path) -> None:
    """No NATS listens at the URL: the spec is refused (exit 2), not the connection (exit 3)."""
    spec = project(tmp_path, f"{{webhok: {WEBHOOK}}}")
    out = subprocess.run([sys.executable, "-m", "incl.cli", "--nats", f"nats://127.0.0.1:{free_port()}", "submit",
                          "-f", str(spec)], capture_output=True, text=True, timeout=30)
    refused_for_the_typo(out)
    assert "cannot reach NATS" not in out.stderr


async def test_the_controller_checks_a_spec_off_the_wire_with_the_same_code(cluster: Cluster) -> None:
    """A client that skips the CLI's check gets the same refusal from the controller."""
    cluster.start_controller()
    await cluster.wait_controller()
    async with cluster.client() as client:
        with pytest.raises(SpecInvalid) as info:
            await client.submit(JobSpec(run="true", notify=Notify(webhook="hooks.slack.com/services/x")), user="u")
        assert info.value.field == "notify.webhook" and "http(s) URL" in info.value.message
        assert await client.jobs() == []


async def test_a_channel_the_cluster_does_not_have_is_refused_at_admission(cluster: Cluster,
                                                                           tmp_path: Path) -> None:
    """Only the controller knows the cluster's channels: it refuses one it lacks, naming the field."""
    cluster.start_controller(notify={"channels": {"ml-alerts": WEBHOOK}})
    await cluster.wait_controller()
    spec = tmp_path / "incl.yaml"
    spec.write_text("run: 'true'\nnotify: '#random'\n")
    out = cluster.cli("submit", "-f", str(spec))
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "notify.channel: unknown channel 'random'; channels: ml-alerts" in out.stderr, out.stderr
    spec.write_text("run: 'true'\nnotify: '#ml-alerts'\n")
    assert cluster.cli("submit", "-f", str(spec)).returncode == 0
