"""With the controllers' auth callout on, the instances the AWS provider launches boot an agent configured to connect
with its instance identity document: the user-data, run by bash against the IMDSv2 fake, says so."""

from __future__ import annotations

import asyncio
import os
from asyncio.subprocess import PIPE
from pathlib import Path

import pytest
import yaml
from imds import FakeImds, Instance

from incl.auth.callout import CalloutConfig
from incl.controller.config import ControllerConfig
from incl.controller.providers.aws import AwsProvider
from incl.controller.providers.base import LaunchFailed
from incl.controller.providers.catalog import AwsConfig


async def test_with_the_callout_on_the_agent_connects_with_its_instance_identity(tmp_path: Path) -> None:
    cfg = ControllerConfig(provider="aws", callout=CalloutConfig(enabled=True))
    script = AwsProvider.from_config(cfg).user_data
    systemctl = tmp_path / "systemctl"
    systemctl.write_text("#!/bin/sh\nexit 0\n")
    systemctl.chmod(0o755)
    async with FakeImds() as imds:
        endpoint = await imds.add(Instance(instance_id="i-0abc123"))
        env = {"PATH": os.environ["PATH"], "INCL_IMDS_ENDPOINT": endpoint, "INCL_CONFIG_DIR": str(tmp_path / "etc"),
               "INCL_SYSTEMCTL": str(systemctl)}
        proc = await asyncio.create_subprocess_exec("bash", "-c", script, env=env, stdout=PIPE, stderr=PIPE)
        _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    config = yaml.safe_load((tmp_path / "etc" / "agent.yaml").read_text())
    assert (config["agent_id"], config["nats_identity"]) == ("i-0abc123", "instance") and "creds" not in config


def test_without_it_the_agent_keeps_its_credential_file() -> None:
    assert "nats_identity: creds" in AwsProvider.from_config(ControllerConfig(provider="aws")).user_data


def test_an_unknown_identity_mode_is_refused() -> None:
    with pytest.raises(LaunchFailed, match="neither creds nor instance"):
        AwsProvider(AwsConfig(), nats_url="nats://x:4222", store_url="s3://b/p", nats_identity="token")
