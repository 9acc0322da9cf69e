"""GPU quotas and the fair order of the queue."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from incl.controller import quota
from incl.controller.quota import (
    Claim,
    Queued,
    QuotaConfig,
    QuotaConfigError,
    QuotaLine,
    Usage,
    check,
    claim_of,
    fair_order,
    load_quota_config,
    parse_quota_config,
    refuse_at_submit,
    report,
    resolve,
    usage,
)
from incl.proto.errors import SpecInvalid
from incl.proto.messages import Job, JobState
from incl.proto.spec import JobSpec, Resources

ADMIN_FILE = """
default_user_gpus: 8
users:
  alice: {max_gpus: 16, team: vision}
  carol: {max_gpus: 4}
teams:
  vision: {max_gpus: 16, members: [alice, bob]}
  nlp: {max_gpus: 32, members: [bob, dave]}
  research: {}
priority_classes:
  urgent: {rank: 100}
  normal: {rank: 0}
  scavenger: {rank: -100}
default_priority: normal
"""


@pytest.fixture
def config(tmp_path: Path) -> QuotaConfig:
    path = tmp_path / "quota.yaml"
    path.write_text(ADMIN_FILE)
    return load_quota_config(path)


def claim(user: str, gpus: int, team: str | None = None, rank: int = 0) -> Claim:
    return Claim(user=user, team=team, gpus=gpus, rank=rank)


def test_admin_file_loads(config: QuotaConfig) -> None:
    assert config.user_limit("alice") == 16
    assert config.user_limit("somebody") == 8  # default_user_gpus
    assert config.team_limit("vision") == 16 and config.team_limit("research") is None
    assert config.priority_classes["urgent"].rank == 100


def test_no_admin_file_means_no_limits_and_the_standard_classes() -> None:
    config = load_quota_config(None)
    assert check(config, claim("anyone", 1000), Usage(users={"anyone": 5000})) is None
    assert sorted(config.priority_classes) == ["high", "low", "normal"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("teams: {vision: {max_gpus: -1}}", "teams.vision.max_gpus: cannot be negative"),
        ("teams: {vision: {max_gpu: 4}}", "teams.vision.max_gpu: unknown key; did you mean 'max_gpus'?"),
        ("teams: {vision: {max_gpus: many}}", "teams.vision.max_gpus: Expected `int | null`"),
        (
            "users: {alice: {team: visoin}}\nteams: {vision: {}}",
            "users.alice.team: unknown team 'visoin'; did you mean 'vision'?",
        ),
        ("users: {alice: {team: v}}\nteams: {v: {members: [bob]}}", "alice is not among the members of team v"),
        ("default_priority: hi", "default_priority: unknown class 'hi'"),
        ("priority_classes: {}", "priority_classes: name at least one class"),
        ("users: [alice]", "users: expected a mapping of names to settings"),
        ("defualt_user_gpus: 4", "defualt_user_gpus: unknown key; did you mean 'default_user_gpus'?"),
    ],
)  # fmt: skip
def test_bad_admin_file_says_which_key_and_why(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "quota.yaml"
    path.write_text(text)
    with pytest.raises(QuotaConfigError) as err:
        load_quota_config(path)
    assert str(err.value).startswith(str(path)) and words in str(err.value)


def test_unreadable_admin_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(QuotaConfigError, match=r"missing\.yaml"):
        load_quota_config(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("users: {alice: [")
    with pytest.raises(QuotaConfigError, match=r"broken\.yaml"):
        load_quota_config(tmp_path / "broken.yaml")


# --- checks ------------------------------------------------------------------------------------------------


def test_waiting_reason_names_the_full_team_quota(config: QuotaConfig) -> None:
    held = usage([claim("alice", 10, "vision"), claim("bob", 6, "vision")])
    assert check(config, claim("bob", 1, "vision"), held) == "team vision: 16/16 GPUs in use"


def test_waiting_reason_names_the_user_quota(config: QuotaConfig) -> None:
    held = usage([claim("carol", 3)])
    assert check(config, claim("carol", 2), held) == "user carol: 3/4 GPUs in use"
    assert check(config, claim("carol", 1), held) is None
    assert check(config, claim("carol", 0), Usage(users={"carol": 4})) is None  # CPU jobs hold no GPU quota


def test_placements_in_one_pass_count_against_the_quota(config: QuotaConfig) -> None:
    """The scheduler adds each placement to the usage: the pass cannot overshoot a quota."""
    held = usage([])
    placed = []
    for c in [claim("carol", 2), claim("carol", 2), claim("carol", 2)]:
        if check(config, c, held) is None:
            held.add(c)
            placed.append(c)
    assert len(placed) == 2 and held.users["carol"] == 4


def test_a_job_bigger_than_its_quota_is_refused_at_submit(config: QuotaConfig) -> None:
    assert refuse_at_submit(config, claim("carol", 5)) == "the job asks for 5 GPUs; user carol may hold at most 4"
    assert refuse_at_submit(config, claim("alice", 16, "vision")) is None  # exactly the quota: it can run
    small_team = parse_quota_config({"teams": {"t": {"max_gpus": 2}}})
    assert refuse_at_submit(small_team, claim("x", 3, "t")) == "the job asks for 3 GPUs; team t may hold at most 2"


def test_report_shows_usage_and_limits(config: QuotaConfig) -> None:
    held = usage([claim("alice", 4, "vision"), claim("zed", 1)])
    lines = report(config, held)
    assert QuotaLine(kind="user", name="alice", used=4, limit=16) in lines
    assert QuotaLine(kind="user", name="zed", used=1, limit=8) in lines
    assert QuotaLine(kind="team", name="vision", used=4, limit=16) in lines
    assert QuotaLine(kind="team", name="research", used=0, limit=None) in lines
    assert [line.kind for line in lines] == ["user"] * 3 + ["team"] * 3


# --- claims ------------------------------------------------------------------------------------------------


def test_team_comes_from_the_spec_the_user_or_the_only_team_listing_the_user(config: QuotaConfig) -> None:
    assert resolve(config, user="alice", gpus=1).team == "vision"  # users.alice.team
    assert resolve(config, user="dave", gpus=1).team == "nlp"  # the one team listing dave
    assert resolve(config, user="bob", gpus=1, team="nlp").team == "nlp"
    assert resolve(config, user="erin", gpus=1).team is None
    assert resolve(config, user="erin", gpus=1, team="research").team == "research"  # open to all


@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        ({"user": "bob"}, "team", "bob is in teams nlp, vision; name one"),
        ({"user": "erin", "team": "vision"}, "team", "erin is not a member of team vision"),
        ({"user": "erin", "team": "visoin"}, "team", "did you mean 'vision'?"),
        ({"user": "erin", "priority": "urgnet"}, "priority", "did you mean 'urgent'?"),
    ],
)
def test_bad_team_or_priority_is_refused_at_submit(config: QuotaConfig, kwargs: dict, field: str, words: str) -> None:
    with pytest.raises(SpecInvalid) as err:
        resolve(config, gpus=1, **kwargs)
    assert err.value.field == field and words in err.value.message


def test_priority_by_class_name_or_rank(config: QuotaConfig) -> None:
    assert resolve(config, user="erin", gpus=1, priority="urgent").rank == 100
    assert resolve(config, user="erin", gpus=1, priority=-100).rank == -100
    assert resolve(config, user="erin", gpus=1).rank == 0


def test_claim_of_a_stored_job_counts_gpus_on_every_node(config: QuotaConfig) -> None:
    spec = JobSpec(run="train", team="vision", resources=Resources(gpus=8, nodes=2))
    job = Job(id="j1", spec=spec, user="alice", state=JobState.RUNNING, submitted_at=0, updated_at=0)
    assert claim_of(config, job) == Claim(user="alice", team="vision", gpus=16, rank=0)
    gone = Job(id="j2", spec=JobSpec(run="x", team="disbanded"), user="al", state=JobState.RUNNING,
               submitted_at=0, updated_at=0)  # fmt: skip
    assert claim_of(config, gone).team == "disbanded"  # still counted after the admin removed the team


# --- order -------------------------------------------------------------------------------------------------


def queued(job_id: str, user: str, t: float, gpus: int = 1, rank: int = 0) -> Queued:
    return Queued(job_id=job_id, claim=claim(user, gpus, rank=rank), submitted_at=t)


def test_a_user_with_a_thousand_queued_jobs_does_not_starve_another() -> None:
    flood = [queued(f"a{i:04d}", "alice", t=i) for i in range(1000)]
    late = [queued("b1", "bob", t=5000), queued("b2", "bob", t=5001)]
    order = [q.job_id for q in fair_order(flood + late, Usage())]
    assert order.index("b1") <= 1 and order.index("b2") <= 3
    assert order[4:10] == [f"a{i:04d}" for i in range(2, 8)]  # alice's own jobs stay in submit order


def test_higher_priority_class_goes_first_whoever_submitted_it() -> None:
    jobs = [queued("low-old", "alice", t=0), queued("urgent-new", "bob", t=100, rank=100)]
    assert [q.job_id for q in fair_order(jobs, Usage())] == ["urgent-new", "low-old"]


def test_the_user_holding_fewer_gpus_is_served_first_within_a_class() -> None:
    jobs = [queued("a1", "alice", t=0, gpus=4), queued("b1", "bob", t=10, gpus=4), queued("b2", "bob", t=11, gpus=4)]
    order = [q.job_id for q in fair_order(jobs, Usage(users={"alice": 8}))]
    assert order == ["b1", "b2", "a1"]  # bob holds 0, then 4, then 8: ties go to the older job


def test_cpu_only_jobs_take_turns_too() -> None:
    jobs = [queued(f"a{i}", "alice", t=i, gpus=0) for i in range(3)] + [queued("b0", "bob", t=9, gpus=0)]
    assert [q.job_id for q in fair_order(jobs, Usage())][:2] == ["a0", "b0"]


def test_fair_order_keeps_every_job_exactly_once() -> None:
    jobs = [queued(f"j{i}", f"u{i % 7}", t=i % 13, gpus=i % 3, rank=(i % 3) * 10) for i in range(200)]
    order = fair_order(jobs, Usage(users={"u1": 3}))
    assert sorted(q.job_id for q in order) == sorted(q.job_id for q in jobs)
    ranks = [q.claim.rank for q in order]
    assert ranks == sorted(ranks, reverse=True)


def test_admin_file_example_in_the_module_docstring_is_valid() -> None:
    doc = quota.__doc__ or ""
    example = textwrap.dedent(doc[doc.index("default_user_gpus") - 4 :])
    config = parse_quota_config(yaml.safe_load(example))
    assert config.team_limit("vision") == 16 and config.users["alice"].team == "vision"
