"""The controller's object graph, built here and only here: each object once, handed what it depends on.

    records   jobs and agents in their buckets           (loaded by the caller before `build`); also studies,
              idle episodes already alerted (GpuWatch) and notices not yet delivered (the Notifier's outbox)
    Shapes    agents' capacities + what could launch      Jobs asks it at submit
    JobChanges                                            Jobs publishes; the notifier, GPU watch, metrics hear
    Jobs      records, bus, Shapes, wake, JobChanges
    Notifier  the cluster's notify settings
    GpuWatch  Jobs, Notifier
    Agents    records, Jobs, the provider (spot reclaimed?), GpuWatch.observe, ControllerMetrics.beat
    Provisioner  the provider, Jobs, Agents
    Studies   records, Jobs, bus, a study's Optuna storage   Jobs' changes wake the study whose trial changed
    Audit     bus                                        the API records state-changing requests in it
    Api       Jobs, Agents, GpuWatch, Studies, Audit, bus
    reader    a standby's Api: the same classes over records the buckets' watches keep (`incl.controller.standby`)

The cycles of old (Jobs needing the agents' shapes, the watch needing Jobs and Jobs telling the watch) are cut
by the two small objects built first: `Shapes` reads the agent records, not the registry; `JobChanges` is
subscribed to below, once its listeners exist.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from incl.bus.connection import Bus
from incl.bus.kv import Bucket
from incl.controller.agents import Agents
from incl.controller.api import Api
from incl.controller.audit import Audit
from incl.controller.config import ControllerConfig
from incl.controller.gpuwatch import GpuWatch
from incl.controller.idle import Episode
from incl.controller.jobs import JobChanges, Jobs, Listener
from incl.controller.jobtally import JobTally
from incl.controller.metrics import ControllerMetrics
from incl.controller.migrate import upgrade_job
from incl.controller.models import Models
from incl.controller.notify import Notice, Notifier, kinds_for
from incl.controller.principals import Principals
from incl.controller.providers import Provider
from incl.controller.providers.local import LocalProvider
from incl.controller.provision import Provisioner
from incl.controller.quota import load_quota_config
from incl.controller.scheduler import Shapes
from incl.controller.shares import Shares, load_key
from incl.controller.store import Records, Retention
from incl.controller.studies import Studies
from incl.proto import subjects
from incl.proto.errors import Unavailable
from incl.proto.messages import TERMINAL, AgentRecord, Job, JobState
from incl.proto.studies import Study

if TYPE_CHECKING:
    from incl.hpo.engine import StudyEngine


@dataclass(frozen=True, slots=True)
class Graph:
    jobs: Jobs
    agents: Agents
    notifier: Notifier
    watch: GpuWatch
    provisioner: Provisioner
    api: Api
    provider: Provider
    studies: Studies


@dataclass(frozen=True, slots=True)
class Stores:
    """The controller's records over their buckets."""
    jobs: Records[Job]
    tally: JobTally  # over every job record, those the jobs' retention let go included
    agents: Records[AgentRecord]
    studies: Records[Study]
    episodes: Records[Episode]  # idle episodes already alerted
    outbox: Records[Notice]  # notices not yet delivered

    async def load(self) -> None:
        for records in (self.jobs, self.agents, self.studies, self.episodes, self.outbox):
            await records.load()
        # Out of the cyclic collector's way: its full collections walked every record held (0.29 s for 90,000 at
        # load average 6, measured by the soak), a pause that grows with the store. Records hold no cycles, so the
        # ones later replaced are still freed, by their reference counts.
        gc.freeze()

    async def catch_up(self, timeout: float) -> int:
        """Bring records loaded in an earlier term up to date (a controller leading again after a short lapse):
        those never deleted from the revision each had seen on (`Records.catch_up`), the small buckets whose keys
        come and go read afresh (a deletion's marker may have expired meanwhile). How many records changed."""
        changed = 0
        for records in (self.jobs, self.agents, self.studies):
            changed += await records.catch_up(timeout)
        await self.episodes.load()
        await self.outbox.load()
        return changed


def records(buckets: Mapping[str, Bucket], fence: Callable[[], None] = lambda: None,
            ended_jobs: int | None = None) -> Stores:
    """The job, agent and study records over their buckets (not yet loaded); `fence` is called before every
    write (the leader's lease check: a deposed leader writes nothing); `ended_jobs`: of the jobs over, how many
    stay in memory (`ControllerConfig.ended_jobs_in_memory`; None: every one)."""
    tally = JobTally()
    retention = None if ended_jobs is None else Retention(done=ended, keep=ended_jobs)
    return Stores(
        jobs=Records(buckets[subjects.JOBS_BUCKET], Job, key=lambda j: j.id, upgrade=upgrade_job, fence=fence,
                     retention=retention, tally=tally),
        tally=tally,
        agents=Records(buckets[subjects.AGENTS_BUCKET], AgentRecord, key=lambda a: a.info.agent_id, fence=fence),
        studies=Records(buckets[subjects.STUDIES_BUCKET], Study, key=lambda s: s.id, fence=fence),
        episodes=Records(buckets[subjects.IDLE_BUCKET], Episode, key=lambda e: e.job_id, fence=fence),
        outbox=Records(buckets[subjects.NOTICES_BUCKET], Notice, key=lambda n: n.id, fence=fence),
    )


def ended(job: Job) -> bool:
    """A job record that will not change again, and that no study reads (a study sums its trials' GPU hours and
    resubmits a trial it finds no job for: its trials stay held)."""
    return job.state in TERMINAL and job.trial is None


def study_engines(cfg: ControllerConfig, bus: Bus, loop: asyncio.AbstractEventLoop,
                  read_only: bool = False) -> Callable[[Study], StudyEngine]:
    """Opens a study's Optuna side over its journal on the controller's connection (called in a worker thread);
    `read_only`: a standby's, which loads the study (Unavailable while the leader has not begun its journal) over
    a journal that refuses every append."""
    from optuna.storages import JournalStorage  # noqa: PLC0415 - Optuna loads with the first study

    from incl.hpo.backend import ReadOnly, backend_over  # noqa: PLC0415 - Optuna's too
    from incl.hpo.engine import StudyEngine  # noqa: PLC0415

    def open_engine(study: Study) -> StudyEngine:
        assert study.spec.hpo is not None
        backend = backend_over(bus, loop, study.journal_subject)
        if not read_only:
            return StudyEngine(JournalStorage(backend), study.id, study.spec.hpo, study.seed)
        try:
            return StudyEngine(JournalStorage(ReadOnly(backend)), study.id, study.spec.hpo, study.seed, create=False)
        except KeyError:
            raise Unavailable("this study's journal is not begun yet (a standby controller answered): ask "
                              "again") from None

    return open_engine


def build(cfg: ControllerConfig, bus: Bus, buckets: Mapping[str, Bucket], stores: Stores, provider: Provider,
          wake: asyncio.Event, metrics: ControllerMetrics, leading: Callable[[], bool] = lambda: True) -> Graph:
    """`wake`: set to start a scheduling pass; `provider`: entered already (its lifespan is the caller's);
    `metrics`: told of job changes and heartbeats, and reads jobs and agents at scrape time; `leading`: whether
    this controller holds the lease now."""
    changes = JobChanges()
    shapes = Shapes(stores.agents, [*cfg.provider_shapes, *provider.shapes()])
    jobs = Jobs(cfg, stores.jobs, bus, shapes=shapes, wake=wake, changes=changes,
                quotas=load_quota_config(cfg.quota_file), submits=buckets[subjects.SUBMITS_BUCKET],
                refusal=provider.refusal, agent_key=lambda agent_id: seal_key(stores.agents, agent_id))
    notifier = Notifier(cfg.notify, cfg.notifier, stores.outbox)
    watch = GpuWatch(jobs, notifier, cfg.gpu_idle, stores.episodes)
    changes.subscribe(notify_of_changes(notifier))
    changes.subscribe(unwatch_unless_running(watch))
    changes.subscribe(metrics.job_changed)
    agents = Agents(cfg, stores.agents, jobs, provider, on_telemetry=watch.observe, on_beat=metrics.beat)
    metrics.watch(stores.tally.states.elements, lambda: (r.state for r in agents.records),
                  lambda: ((r.info.agent_id, agents.telemetry.get(r.info.agent_id)) for r in agents.alive()))
    provisioner = Provisioner(cfg.reconcile, provider, jobs, agents)
    studies = Studies(cfg.studies, stores.studies, jobs, bus, study_engines(cfg, bus, asyncio.get_running_loop()))
    changes.subscribe(studies.job_changed)
    models = Models(buckets[subjects.MODELS_BUCKET], stores.jobs, bus, cfg.store_url, fence=stores.jobs.fence)
    audit = Audit(bus, cfg.audit, retry_initial=cfg.retry_initial, retry_max=cfg.retry_max,
                  page_bytes=bus.max_payload // 2, fence=stores.jobs.fence)
    shares = Shares(buckets[subjects.SHARES_BUCKET], stores.jobs, models, cfg.store_url,
                    load_key(cfg.shares.key_path()), cfg.shares, fence=stores.jobs.fence)
    api = Api(cfg.controller_id, jobs, agents, watch, bus, studies, models, audit, cfg.store_url,
              page_bytes=bus.max_payload // 2, principals=Principals(cfg.identities_path()), shares=shares,
              leading=leading, read_timeout=cfg.request_timeout)
    return Graph(jobs=jobs, agents=agents, notifier=notifier, watch=watch, provisioner=provisioner, api=api,
                 provider=provider, studies=studies)


def reader(cfg: ControllerConfig, bus: Bus, buckets: Mapping[str, Bucket], stores: Stores) -> tuple[Jobs, Api]:
    """A standby's API over `stores` (the records it keeps warm, whose fence refuses every write): the leader's
    own `Api`, so the same checks of who may see what. What only the leader holds in memory (agents' heartbeats and
    GPU readings, why a queued job waits) is empty here. Also the job service, told of each job change watched."""
    never = stores.jobs.fence
    jobs = Jobs(cfg, stores.jobs, bus, shapes=lambda: [], wake=asyncio.Event(), changes=JobChanges(),
                quotas=load_quota_config(cfg.quota_file))
    watch = GpuWatch(jobs, Notifier(cfg.notify, cfg.notifier), cfg.gpu_idle, stores.episodes)
    agents = Agents(cfg, stores.agents, jobs, LocalProvider())
    studies = Studies(cfg.studies, stores.studies, jobs, bus,
                      study_engines(cfg, bus, asyncio.get_running_loop(), read_only=True))
    models = Models(buckets[subjects.MODELS_BUCKET], stores.jobs, bus, cfg.store_url, fence=never)
    audit = Audit(bus, cfg.audit, retry_initial=cfg.retry_initial, retry_max=cfg.retry_max,
                  page_bytes=bus.max_payload // 2, fence=never)
    shares = Shares(buckets[subjects.SHARES_BUCKET], stores.jobs, models, cfg.store_url,
                    load_key(cfg.shares.key_path()), cfg.shares, fence=never)
    return jobs, Api(cfg.controller_id, jobs, agents, watch, bus, studies, models, audit, cfg.store_url,
                     page_bytes=bus.max_payload // 2, principals=Principals(cfg.identities_path()), shares=shares,
                     leading=lambda: False, read_timeout=cfg.request_timeout)


def seal_key(agents: Records[AgentRecord], agent_id: str) -> bytes | None:
    """The public key the agent registered with, to seal its assignments' secrets to (None: none sent)."""
    record = agents.get(agent_id)
    return record.info.seal_key if record is not None else None


def notify_of_changes(notifier: Notifier) -> Listener:
    """Each change a notification is due for (started, failed, preempted...) goes to the notifier's queue."""
    def listener(before: Job | None, after: Job) -> None:
        for kind in kinds_for(before, after):
            notifier.notify(Notice.from_job(kind, after))
    return listener


def unwatch_unless_running(watch: GpuWatch) -> Listener:
    """A job that stops running leaves the GPU watch (its idle episode and utilization are over)."""
    def listener(before: Job | None, after: Job) -> None:
        if after.state is not JobState.RUNNING:
            watch.forget(after.id)
    return listener
