"""The `aws` provider: launch, describe and terminate the cluster's EC2 instances (aiobotocore).

    launch            spot (one-time, terminated on interruption) unless on-demand is asked for. Candidates
                      are the catalog's instance types x the configured subnets, tried in order; a capacity
                      error (CAPACITY_ERRORS) moves on to the next, a round with none left backs off and starts
                      again, and after `launch_rounds` rounds `NoCapacity` names every try. An instance
                      that still exists, tagged for the job, attempt and generation, is returned instead of a
                      new one, and each RunInstances carries a ClientToken derived from cluster, job, attempt,
                      generation and candidate, so a call retried after a lost reply is answered with the
                      instance it made, while a relaunch (the next generation) gets a new instance.
    gang              a multi-node launch (`launch.nodes` > 1) is one RunInstances of MinCount = MaxCount = nodes
                      (EC2 launches them all or none, and advises one request per cluster placement group) into
                      a `cluster` placement group named from cluster, job, attempt and generation (made first,
                      idempotently, tagged like the instances), in one subnet, so one availability zone; each
                      instance then gets its `incl:rank` tag by its launch index. Failover is the gang's: a
                      candidate that answers with fewer than `nodes` (never, on EC2) has those terminated at once
                      and counts as a capacity failure. A launch that fails deletes its placement group; the
                      reconcile loop deletes the groups whose instances are gone (`delete_placement_groups`).
                      `resources.efa` launches each instance with an EFA interface (`InterfaceType: efa`) on types
                      the catalog marks `efa`, and only on those.
    describe          every instance tagged with the cluster, paginated, in every state: shutting-down and
                      terminated ones too (EC2 shows them for about an hour), with their state reason
    terminate         only instances that carry the cluster's tag
    spot_interrupted  whether EC2 ended an instance for a spot interruption (its state reason)

Every instance carries the tags `incl:cluster`, `incl:job`, `incl:attempt`, `incl:generation`, `incl:role=agent`
(and the config's `extra_tags`; a gang's also `incl:rank`), and boots with user-data rendered from
`controller/user-data.sh.tmpl`. Its configuration and instance catalog: `catalog.py`.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import ClientError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_exponential

from incl.bus.connection import server_list
from incl.controller.providers.base import LaunchedInstance, LaunchFailed
from incl.controller.providers.catalog import AwsConfig, candidates, efa_refusal, efa_types
from incl.controller.providers.catalog import shapes as catalog_shapes
from incl.controller.reconcile import (
    EXISTING,
    ROLE_AGENT,
    TAG_ATTEMPT,
    TAG_CLUSTER,
    TAG_GENERATION,
    TAG_JOB,
    TAG_RANK,
    TAG_ROLE,
    Launch,
    Market,
    ObservedGroup,
    ObservedInstance,
)
from incl.proto.messages import Resources
from incl.proto.spec import Resources as Wanted

if TYPE_CHECKING:
    from incl.controller.config import ControllerConfig

log = structlog.get_logger()

DEFAULT_TEMPLATE = Path(__file__).resolve().parents[1] / "user-data.sh.tmpl"  # package data: ships in the wheel
USER_DATA_LIMIT = 16 * 1024  # bytes, before base64: EC2's limit

# RunInstances errors that mean "not this type here, now": try the next candidate.
CAPACITY_ERRORS = frozenset({
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "InstanceLimitExceeded",
    "VcpuLimitExceeded",
    "SpotMaxPriceTooLow",
    "MaxSpotInstanceCountExceeded",
    "Unsupported",  # e.g. the type is not offered in this availability zone
    "PartialLaunch",  # ours: fewer instances than a gang's nodes came up (they were terminated)
})
GROUP_EXISTS = "InvalidPlacementGroup.Duplicate"
SPOT_INTERRUPTED = frozenset({"Server.SpotInstanceTermination", "Server.SpotInstanceShutdown"})
_FILTER_VALUES = 200  # values per filter in one Describe call


class NoInstanceType(LaunchFailed):
    """Nothing in the catalog fits the job."""


class NoCapacity(LaunchFailed):
    """Every candidate failed with a capacity error, `launch_rounds` times over."""

    def __init__(self, launch: Launch, tried: list[tuple[str, str | None, str]]) -> None:
        last = {(t, s): code for t, s, code in tried}  # the last answer for each candidate
        names = "; ".join(f"{t} in {s or 'the default subnet'}: {code}" for (t, s), code in last.items())
        super().__init__(f"no {launch.market} capacity for job {launch.job_id} attempt {launch.attempt} "
                         f"after {len(tried)} tries: {names}")
        self.tried = tried


class _UserData(string.Template):
    delimiter = "@@"  # `$` belongs to the shell script


_SECRET_ID = re.compile(r"[A-Za-z0-9/_+=.@:-]*")  # what Secrets Manager allows in a name or ARN
_REGION = re.compile(r"[a-z0-9-]+")


def render_user_data(template: str, *, nats_url: str, store_url: str, agent_secret: str | None = None,
                     region: str = "us-east-1", nats_identity: str = "creds") -> str:
    """The boot script. URLs go in as JSON strings, which YAML reads as quoted scalars; the secret's id and the
    region go in single quotes, so they are checked to hold nothing the shell would read. `nats_identity`: how the
    agent proves who it is to NATS (`instance`: its signed identity document, for the controllers' auth callout)."""
    if nats_identity not in ("creds", "instance"):
        raise LaunchFailed(f"nats_identity {nats_identity!r} is neither creds nor instance")
    if not _SECRET_ID.fullmatch(agent_secret or ""):
        raise LaunchFailed(f"aws.agent_secret {agent_secret!r} is not a Secrets Manager name or ARN")
    if not _REGION.fullmatch(region):
        raise LaunchFailed(f"aws.region {region!r} is not a region name")
    text = _UserData(template).substitute(nats_url=json.dumps(nats_url), store_url=json.dumps(store_url),
                                          agent_secret=agent_secret or "", region=region, nats_identity=nats_identity)
    if len(text.encode()) > USER_DATA_LIMIT:
        raise LaunchFailed(f"user-data is {len(text.encode())} bytes, over EC2's {USER_DATA_LIMIT}")
    return text


def client_token(launch: Launch, instance_type: str, subnet: str | None) -> str:
    key = "\0".join((launch.cluster, launch.job_id, str(launch.attempt), str(launch.generation), launch.market,
                     instance_type, subnet or ""))
    return hashlib.sha256(key.encode()).hexdigest()  # 64 characters: EC2's maximum


def placement_group_name(launch: Launch) -> str:
    """One cluster placement group per gang launch (a relaunch gets a new one: the old may still hold members)."""
    return f"incl-{launch.cluster}-{launch.job_id}-{launch.attempt}-{launch.generation}"[:255]


def _observed(i: dict[str, Any]) -> ObservedInstance:
    return ObservedInstance(
        instance_id=i["InstanceId"], state=i["State"]["Name"], instance_type=i["InstanceType"],
        market=Market.SPOT if i.get("InstanceLifecycle") == "spot" else Market.ON_DEMAND,
        launched_at=i["LaunchTime"].timestamp(), tags={t["Key"]: t["Value"] for t in i.get("Tags") or []},
        availability_zone=(i.get("Placement") or {}).get("AvailabilityZone"),
        state_reason=(i.get("StateReason") or {}).get("Code"), launch_index=i.get("AmiLaunchIndex") or 0)


def _rank(i: ObservedInstance) -> int:
    return i.rank if i.rank is not None else i.launch_index


def _chunks(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[n:n + size]) for n in range(0, len(items), size)]


def _log_round(launch: Launch) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        log.warning("launch_round_failed", job_id=launch.job_id, attempt=launch.attempt,
                    round=state.attempt_number, retry_in=round(state.upcoming_sleep, 2))
    return before_sleep


class AwsProvider:
    """`async with AwsProvider(cfg, nats_url=..., store_url=...) as aws:` — one EC2 client for its life."""

    provisions = True

    def __init__(self, cfg: AwsConfig, *, nats_url: str, store_url: str, session: AioSession | None = None,
                 nats_identity: str = "creds") -> None:
        self.cfg = cfg
        template = Path(cfg.user_data_template) if cfg.user_data_template else DEFAULT_TEMPLATE
        self.user_data = render_user_data(template.read_text(), nats_url=nats_url, store_url=store_url,
                                          agent_secret=cfg.agent_secret, region=cfg.region,
                                          nats_identity=nats_identity)
        self._session = session or get_session()
        self._stack = AsyncExitStack()
        self._ec2: Any = None

    @classmethod
    def from_config(cls, cfg: ControllerConfig) -> AwsProvider:
        """Instances' agents dial `agent_nats_url` (else the controller's own `nats_url`), as one comma-separated
        string of URLs; with the auth callout on, each connects as itself with its instance identity document."""
        nats_url = ",".join(server_list(cfg.agent_nats_url or cfg.nats_url))
        return cls(cfg.aws, nats_url=nats_url, store_url=cfg.store_url,
                   nats_identity="instance" if cfg.callout.enabled else "creds")

    def shapes(self) -> list[Resources]:
        return catalog_shapes(self.cfg.catalog)

    async def __aenter__(self) -> AwsProvider:
        cfg = self.cfg
        config = AioConfig(connect_timeout=cfg.connect_timeout, read_timeout=cfg.read_timeout,
                           retries={"mode": "standard", "total_max_attempts": cfg.api_max_attempts})
        self._ec2 = await self._stack.enter_async_context(self._session.create_client(
            "ec2", region_name=cfg.region, endpoint_url=cfg.endpoint_url, config=config))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    # --- launch ---------------------------------------------------------------------------------------------

    def refusal(self, want: Wanted) -> str | None:
        return efa_refusal(self.cfg.catalog, want)

    async def launch(self, launch: Launch) -> list[LaunchedInstance]:
        existing = await self._find(launch)
        if len(existing) >= launch.nodes:
            log.info("launch_exists", job_id=launch.job_id, attempt=launch.attempt, generation=launch.generation,
                     instance_ids=[i.instance_id for i in existing])
            return existing
        types = candidates(self.cfg.catalog, launch.resources)
        if not types:
            efa = " with EFA" if launch.resources.efa else ""
            raise NoInstanceType(f"no instance type in the catalog{efa} fits job {launch.job_id}: {launch.resources}")
        cfg = self.cfg
        subnets: list[str | None] = [*cfg.subnets] or [None]  # None: the default subnet
        tries = [(t, s) for t in types for s in subnets]
        tried: list[tuple[str, str | None, str]] = []
        group = await self._create_group(launch) if launch.nodes > 1 else None
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(cfg.launch_rounds), retry=retry_if_exception_type(NoCapacity), reraise=True,
                wait=wait_exponential(multiplier=cfg.launch_backoff_initial, max=cfg.launch_backoff_max),
                before_sleep=_log_round(launch),
            ):
                with attempt:
                    return await self._round(launch, tries, tried, group)
        except LaunchFailed:
            if group is not None:
                await self.delete_placement_groups(launch.cluster, [group])
            raise
        raise AssertionError("unreachable")

    async def _round(self, launch: Launch, tries: list[tuple[str, str | None]],
                     tried: list[tuple[str, str | None, str]], group: str | None) -> list[LaunchedInstance]:
        for instance_type, subnet in tries:
            try:
                reply = await self._ec2.run_instances(**self._run_params(launch, instance_type, subnet, group))
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code not in CAPACITY_ERRORS:
                    raise LaunchFailed(f"RunInstances {instance_type} for job {launch.job_id}: {exc}") from exc
                log.info("launch_no_capacity", job_id=launch.job_id, attempt=launch.attempt,
                         instance_type=instance_type, subnet=subnet, code=code)
                tried.append((instance_type, subnet, code))
                continue
            made = sorted(reply["Instances"], key=lambda i: i.get("AmiLaunchIndex") or 0)
            if len(made) < launch.nodes:  # all or none: never a part of a gang
                ids = [i["InstanceId"] for i in made]
                log.warning("launch_partial", job_id=launch.job_id, attempt=launch.attempt, instance_ids=ids,
                            nodes=launch.nodes, instance_type=instance_type, subnet=subnet)
                await self._ec2.terminate_instances(InstanceIds=ids)
                tried.append((instance_type, subnet, "PartialLaunch"))
                continue
            got = [LaunchedInstance(instance_id=i["InstanceId"], instance_type=instance_type, market=launch.market,
                                    subnet_id=i.get("SubnetId"), rank=rank, placement_group=group,
                                    availability_zone=(i.get("Placement") or {}).get("AvailabilityZone"))
                   for rank, i in enumerate(made)]
            if launch.nodes > 1:
                await self._tag_ranks(got)
            log.info("instance_launched", job_id=launch.job_id, attempt=launch.attempt, generation=launch.generation,
                     instance_ids=[g.instance_id for g in got], instance_type=instance_type, subnet=subnet,
                     market=launch.market, placement_group=group)
            return got
        raise NoCapacity(launch, tried)

    async def _tag_ranks(self, instances: Sequence[LaunchedInstance]) -> None:
        for i in instances:
            await self._ec2.create_tags(Resources=[i.instance_id], Tags=[{"Key": TAG_RANK, "Value": str(i.rank)}])

    def tags(self, launch: Launch) -> list[dict[str, str]]:
        ours = {TAG_CLUSTER: launch.cluster, TAG_JOB: launch.job_id, TAG_ATTEMPT: str(launch.attempt),
                TAG_GENERATION: str(launch.generation), TAG_ROLE: ROLE_AGENT,
                "Name": f"incl-{launch.cluster}-{launch.job_id}-{launch.attempt}"}
        return [{"Key": k, "Value": v} for k, v in {**self.cfg.extra_tags, **ours}.items()]

    def _run_params(self, launch: Launch, instance_type: str, subnet: str | None,
                    group: str | None = None) -> dict[str, Any]:
        cfg, tags = self.cfg, self.tags(launch)
        kinds = ["instance", "volume"] + (["spot-instances-request"] if launch.market is Market.SPOT else [])
        params: dict[str, Any] = {
            "ImageId": cfg.ami, "InstanceType": instance_type, "MinCount": launch.nodes, "MaxCount": launch.nodes,
            "ClientToken": client_token(launch, instance_type, subnet), "UserData": self.user_data,
            "TagSpecifications": [{"ResourceType": kind, "Tags": tags} for kind in kinds],
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled",
                                "HttpPutResponseHopLimit": cfg.imds_hop_limit},
            "InstanceInitiatedShutdownBehavior": "terminate",
        }
        if group is not None:
            params["Placement"] = {"GroupName": group}
        if launch.resources.efa and instance_type in efa_types(cfg.catalog):
            # The interface carries the subnet and security groups (EC2 refuses them beside NetworkInterfaces).
            efa: dict[str, Any] = {"DeviceIndex": 0, "NetworkCardIndex": 0, "InterfaceType": "efa",
                                   "DeleteOnTermination": True}
            if subnet:
                efa["SubnetId"] = subnet
            if cfg.security_group_ids:
                efa["Groups"] = list(cfg.security_group_ids)
            params["NetworkInterfaces"] = [efa]
        else:
            if subnet:
                params["SubnetId"] = subnet
            if cfg.security_group_ids:
                params["SecurityGroupIds"] = list(cfg.security_group_ids)
        if cfg.instance_profile:
            key = "Arn" if cfg.instance_profile.startswith("arn:") else "Name"
            params["IamInstanceProfile"] = {key: cfg.instance_profile}
        if cfg.key_name:
            params["KeyName"] = cfg.key_name
        if launch.market is Market.SPOT:
            spot = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
            if cfg.spot_max_price:
                spot["MaxPrice"] = cfg.spot_max_price
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": spot}
        return params

    async def _find(self, launch: Launch) -> list[LaunchedInstance]:
        """The instances made earlier for this launch, in rank order (a gang's missing rank tags written now)."""
        found = await self._describe([
            {"Name": f"tag:{TAG_CLUSTER}", "Values": [launch.cluster]},
            {"Name": f"tag:{TAG_JOB}", "Values": [launch.job_id]},
            {"Name": f"tag:{TAG_ATTEMPT}", "Values": [str(launch.attempt)]},
            {"Name": f"tag:{TAG_GENERATION}", "Values": [str(launch.generation)]},
            {"Name": "instance-state-name", "Values": sorted(EXISTING)},
        ])
        if len(found) < launch.nodes:
            return []  # none, or a gang not yet whole in DescribeInstances: RunInstances' ClientToken answers
        found = sorted(found, key=lambda i: (_rank(i), i.instance_id))[: launch.nodes]
        group = placement_group_name(launch) if launch.nodes > 1 else None
        got = [LaunchedInstance(instance_id=i.instance_id, instance_type=i.instance_type, market=i.market,
                                availability_zone=i.availability_zone, existing=True, rank=_rank(i),
                                placement_group=group)
               for i in found]
        if launch.nodes > 1 and any(i.rank is None for i in found):
            await self._tag_ranks(got)  # the controller stopped between RunInstances and CreateTags
        return got

    # --- placement groups -----------------------------------------------------------------------------------

    async def _create_group(self, launch: Launch) -> str:
        name = placement_group_name(launch)
        tags = [t for t in self.tags(launch) if t["Key"] != "Name"]
        try:
            await self._ec2.create_placement_group(GroupName=name, Strategy="cluster", TagSpecifications=[
                {"ResourceType": "placement-group", "Tags": tags}])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != GROUP_EXISTS:
                raise LaunchFailed(f"CreatePlacementGroup {name} for job {launch.job_id}: {exc}") from exc
        return name

    async def placement_groups(self, cluster: str) -> list[ObservedGroup]:
        reply = await self._ec2.describe_placement_groups(
            Filters=[{"Name": f"tag:{TAG_CLUSTER}", "Values": [cluster]}])
        return [ObservedGroup(name=g["GroupName"], tags={t["Key"]: t["Value"] for t in g.get("Tags") or []})
                for g in reply.get("PlacementGroups", [])]

    async def delete_placement_groups(self, cluster: str, names: Sequence[str]) -> list[str]:
        """Delete the cluster's groups among `names`; one still in use (its instances shutting down) is left for
        the next pass."""
        ours = {g.name for g in await self.placement_groups(cluster)}
        deleted = []
        for name in sorted(set(names) & ours):
            try:
                await self._ec2.delete_placement_group(GroupName=name)
            except ClientError as exc:
                log.info("placement_group_kept", group=name, code=exc.response.get("Error", {}).get("Code"))
                continue
            deleted.append(name)
        if deleted:
            log.info("placement_groups_deleted", cluster=cluster, groups=deleted)
        return deleted

    # --- describe, terminate ------------------------------------------------------------------------------

    async def _describe(self, filters: list[dict[str, Any]]) -> list[ObservedInstance]:
        pages = self._ec2.get_paginator("describe_instances").paginate(
            Filters=filters, PaginationConfig={"PageSize": self.cfg.describe_page_size})
        return [_observed(i) async for page in pages for r in page["Reservations"] for i in r["Instances"]]

    async def describe(self, cluster: str) -> list[ObservedInstance]:
        """Every instance tagged with the cluster, in any state (terminated ones for about an hour)."""
        return await self._describe([{"Name": f"tag:{TAG_CLUSTER}", "Values": [cluster]}])

    async def _by_id(self, instance_ids: Sequence[str], *filters: dict[str, Any]) -> list[ObservedInstance]:
        found: list[ObservedInstance] = []
        for chunk in _chunks(list(dict.fromkeys(instance_ids)), _FILTER_VALUES):
            found += await self._describe([{"Name": "instance-id", "Values": chunk}, *filters])
        return found

    async def terminate(self, cluster: str, instance_ids: Sequence[str]) -> list[str]:
        """Terminate those of `instance_ids` that carry the cluster's tag and still exist; returns their ids."""
        ours = await self._by_id(instance_ids, {"Name": f"tag:{TAG_CLUSTER}", "Values": [cluster]})
        ids = sorted(i.instance_id for i in ours if i.state in EXISTING)
        skipped = sorted(set(instance_ids) - {i.instance_id for i in ours})
        if skipped:
            log.warning("terminate_skipped", cluster=cluster, instance_ids=skipped, why="not tagged for the cluster")
        for chunk in _chunks(ids, _FILTER_VALUES):
            await self._ec2.terminate_instances(InstanceIds=chunk)
        if ids:
            log.info("instances_terminated", cluster=cluster, instance_ids=ids)
        return ids

    async def spot_interrupted(self, instance_ids: Sequence[str]) -> dict[str, bool]:
        """For each id: True if EC2 stopped or terminated it for a spot interruption (False if not, or unknown)."""
        reasons = {i.instance_id: i.state_reason for i in await self._by_id(instance_ids)}
        return {iid: reasons.get(iid) in SPOT_INTERRUPTED for iid in instance_ids}
