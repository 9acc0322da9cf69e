"""The `aws` provider's configuration and its instance catalog, as pure data: which instance types can run a job.

A catalog entry is one machine shape (GPU count and model, CPUs, memory) with the instance types that give at
least that shape, best first. A job's candidates are the types of every entry that fits it, smallest shape
first; a job that names `resources.instance_types` gets exactly those, in its order. Example (YAML, under the
controller's `aws:` key):

    catalog:
      - {gpus: 1, gpu_model: A10G, cpus: 4, memory_gib: 16, instance_types: [g5.xlarge]}
      - {gpus: 8, gpu_model: H100, cpus: 192, memory_gib: 2048, instance_types: [p5.48xlarge], efa: true}

`efa: true` says every type of the entry has EFA network interfaces: a job with `resources.efa` gets only those
(and types it names itself that the catalog does not list), launched with an EFA interface.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from incl.proto.messages import Resources
from incl.proto.spec import Resources as Wanted

GIB = 2**30


class CatalogEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    gpus: int = 0
    gpu_model: str | None = None  # as users write it in `resources.gpus` ("H100:8"); compared case-blind
    cpus: float
    memory_gib: float
    instance_types: list[str]  # ordered: the first is tried first
    efa: bool = False  # every type here has EFA network interfaces

    def shape(self) -> Resources:
        return Resources(cpus=self.cpus, memory=int(self.memory_gib * GIB), gpus=self.gpus, gpu_model=self.gpu_model)

    def fits(self, want: Wanted) -> bool:
        if (want.gpus == 0) != (self.gpus == 0):  # no GPU machine for a CPU job, and the other way round
            return False
        model_ok = want.gpu_model is None or (self.gpu_model or "").lower() == want.gpu_model.lower()
        return (self.gpus >= want.gpus and model_ok and self.cpus + 1e-9 >= want.cpus
                and self.memory_gib * GIB >= (want.memory or 0))


class AwsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    region: str = "us-east-1"
    endpoint_url: str | None = None  # None: AWS itself (or AWS_ENDPOINT_URL); tests point it at moto

    # What every instance is launched with.
    ami: str = ""  # the GPU AMI built from deploy/packer/gpu-ami.pkr.hcl
    subnets: list[str] = []  # one per availability zone to spread over, in order of preference
    security_group_ids: list[str] = []
    instance_profile: str | None = None  # name or ARN of the instance profile (deploy/iam/instance-policy.json)
    key_name: str | None = None
    extra_tags: dict[str, str] = {}  # added to every instance and volume (cost allocation, owner...)
    spot_max_price: str | None = None  # None: capped at the on-demand price, AWS's default
    imds_hop_limit: int = 1  # 1: containers on a bridge network cannot reach the instance role's credentials
    user_data_template: str | None = None  # None: the package's user-data.sh.tmpl (controller/ in the repo)
    # A Secrets Manager secret (name or ARN) the boot script reads with the instance role: JSON with the agent's
    # NATS credential file (`creds`) and the CA its server is verified against (`ca`). None: agents get neither.
    agent_secret: str | None = None
    catalog: list[CatalogEntry] = []

    # The EC2 API: every call has a timeout; botocore retries throttling and 5xx this many times in all.
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    api_max_attempts: int = 3
    describe_page_size: int = 500

    # Capacity failover: every candidate (type x subnet) is one try; a round tries them all; between rounds
    # the provider backs off exponentially from `launch_backoff_initial` up to `launch_backoff_max`.
    launch_rounds: int = 3
    launch_backoff_initial: float = 5.0
    launch_backoff_max: float = 60.0


def candidates(catalog: Iterable[CatalogEntry], want: Wanted) -> list[str]:
    """Instance types that can run `want`, best first: the job's own list, else every fitting catalog entry's,
    smallest shape first (entries of one shape keep the catalog's order). With `want.efa`, only types with EFA."""
    entries = list(catalog)
    if want.instance_types:
        types = list(dict.fromkeys(want.instance_types))
    else:
        fitting = sorted((e for e in entries if e.fits(want)), key=lambda e: (e.gpus, e.cpus, e.memory_gib))
        types = list(dict.fromkeys(t for e in fitting for t in e.instance_types))
    if not want.efa:
        return types
    efa, listed = efa_types(entries), {t for e in entries for t in e.instance_types}
    return [t for t in types if t in efa or t not in listed]  # a type the catalog does not list: the job knows


def efa_types(catalog: Iterable[CatalogEntry]) -> set[str]:
    """The types the catalog says have EFA."""
    return {t for e in catalog if e.efa for t in e.instance_types}


def efa_refusal(catalog: Iterable[CatalogEntry], want: Wanted) -> str | None:
    """Why a job asking for EFA can never get it here (None: it can, or it does not ask)."""
    entries = list(catalog)
    if not want.efa or candidates(entries, want):
        return None
    fitting = candidates(entries, msgspec.structs.replace(want, efa=False))
    return (f"no instance type that fits has EFA (fitting: {', '.join(fitting) or 'none'}; "
            f"with EFA: {', '.join(sorted(efa_types(entries))) or 'none'})")


def shapes(catalog: Iterable[CatalogEntry]) -> list[Resources]:
    """What the provider could ever launch (`AwsProvider.shapes`, for submit-time admission)."""
    return [e.shape() for e in catalog]
