"""`incl study` and a study's `incl submit`, as a user reads them: the trials table, the best trial, the best-so-far
sparkline and importances of `show`; `ls`; JSON that decodes back to the reply; a bad `hpo:` refused in one line
before anything is submitted. The controller is a stand-in Client that answers with hand-built records."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest
from click.testing import CliRunner, Result

from incl.cli.main import cli
from incl.proto.errors import NotFound
from incl.proto.messages import Attempt, Job, JobState, ListJobsReply, TrialRef
from incl.proto.spec import JobSpec, load_spec
from incl.proto.studies import (
    GetStudyReply,
    Study,
    StudyState,
    StudySummary,
    TrialState,
    TrialView,
)

NOW = time.time()
MARKUP = "[bold red]x[/]"  # a categorical choice is user text: shown as written, never read as markup
SPEC = load_spec({"name": "resnet-sweep", "run": "python3 train.py", "hpo": {
    "metric": "val_loss", "trials": 20, "parallel": 4, "pruner": "asha", "budget": {"gpu_hours": 40, "wall": "12h"},
    "params": {"LR": {"type": "float", "low": 1e-5, "high": 0.1, "log": True}, "OPT": ["adam", "sgd", MARKUP]}}})
STUDY = Study(id="s-3f9a1c", spec=SPEC, user="ada", state=StudyState.RUNNING, created_at=NOW - 3600,
              updated_at=NOW, seed=1234)
OOM = "exit code 1: CUDA out of memory"
TRIALS = [  # out of order, as a journal may list them
    TrialView(number=2, state=TrialState.PRUNED, params={"LR": 0.05, "OPT": MARKUP}, job_id="j-ccc",
              started_at=NOW - 2000, ended_at=NOW - 1900, last_step=3),
    TrialView(number=0, state=TrialState.COMPLETE, params={"LR": 0.0031, "OPT": "sgd"}, value=0.4123,
              job_id="j-aaa", started_at=NOW - 3000, ended_at=NOW - 2400),
    TrialView(number=1, state=TrialState.COMPLETE, params={"LR": 0.00042, "OPT": "adam"}, value=0.2871,
              job_id="j-bbb", started_at=NOW - 2900, ended_at=NOW - 2000),
    TrialView(number=3, state=TrialState.FAIL, params={"LR": 0.01, "OPT": "adam"}, job_id="j-ddd",
              started_at=NOW - 1800, ended_at=NOW - 1700, reason=OOM),
    TrialView(number=4, state=TrialState.RUNNING, params={"LR": 0.001, "OPT": "sgd"}, job_id="j-eee",
              started_at=NOW - 600),
]
SUMMARY = StudySummary(study=STUDY, counts={"COMPLETE": 2, "PRUNED": 1, "FAIL": 1, "RUNNING": 1}, best_value=0.2871,
                       best_trial=1, gpu_hours=3.2)
REPLY = GetStudyReply(summary=SUMMARY, trials=TRIALS, best_so_far=[0.4123, 0.2871, 0.2871, 0.2871],
                      importances={"OPT": 0.19, "LR": 0.81})


class FakeClient:
    """The Client the commands use, answering from the records above; `calls` is what was asked of it."""

    calls: ClassVar[list[tuple[str, Any]]] = []

    def __init__(self, url: str) -> None:
        pass

    async def __aenter__(self) -> FakeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def studies(self, user: str | None = None) -> list[StudySummary]:
        self.calls.append(("studies", user))
        return [SUMMARY]

    async def study(self, study_id: str) -> GetStudyReply:
        self.calls.append(("study", study_id))
        if study_id != STUDY.id:
            raise NotFound(f"no study {study_id}")
        return REPLY

    async def stop_study(self, study_id: str, cancel: bool = False) -> Study:
        self.calls.append(("stop_study", (study_id, cancel)))
        return msgspec.structs.replace(STUDY, state=StudyState.STOPPING, cancel_running=cancel)

    async def submit_study(self, spec: JobSpec, user: str, code: Any = None) -> Study:
        self.calls.append(("submit_study", spec))
        return STUDY

    async def submit(self, spec: JobSpec, user: str, code: Any = None) -> Job:
        self.calls.append(("submit", spec))
        raise AssertionError("a spec with hpo: is a study, not a job")

    async def jobs_reply(self, states: Any, user: str | None, study: str | None = None) -> ListJobsReply:
        self.calls.append(("jobs_reply", study))
        spec = load_spec({"run": "python3 train.py"})
        job = Job(id="j-bbb", spec=spec, user="ada", state=JobState.SUCCEEDED, submitted_at=NOW - 2900,
                  updated_at=NOW, trial=TrialRef(study_id=STUDY.id, number=1),
                  attempts=[Attempt(number=1, agent_id="local-0", state=JobState.SUCCEEDED, assigned_at=NOW - 2900)])
        return ListJobsReply(jobs=[job])


@pytest.fixture(autouse=True)
def fake_client(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    # The CLI configures structlog for the process (cached loggers): in-process, that would hide later tests' logs
    # from structlog's capture_logs.
    # The commands import both as they run (a lean `--help`), so the patch goes where they import them from.
    monkeypatch.setattr("incl.bus.logsetup.configure", lambda level: None)
    FakeClient.calls = []
    monkeypatch.setattr("incl.bus.client.Client", FakeClient)
    return FakeClient.calls


def incl(*args: str) -> Result:
    return CliRunner().invoke(cli, ["--nats", "nats://127.0.0.1:1", *args])


def test_show_lists_every_trial_by_number_with_its_params_value_duration_job_and_reason() -> None:
    result = incl("study", "show", STUDY.id)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    rows = [line.split() for line in lines if line.split()[:1] in (["0"], ["1"], ["2"], ["3"], ["4"])]
    assert [row[0] for row in rows] == ["0", "1", "2", "3", "4"]
    assert rows[0][:5] == ["0", "COMPLETE", "0.4123", "LR=0.0031", "OPT=sgd"] and "10m00s" in rows[0]
    assert "j-aaa" in rows[0]
    assert " ".join(rows[2]) == f"2 PRUNED - LR=0.05 OPT={MARKUP} 1m40s j-ccc at step 3"
    assert " ".join(rows[3]).endswith(OOM)
    assert rows[4][:2] == ["4", "RUNNING"]


def test_show_has_the_settings_the_best_trial_the_best_so_far_sparkline_and_importances() -> None:
    out = incl("study", "show", STUDY.id).output
    for text in ("s-3f9a1c resnet-sweep  RUNNING", "val_loss (minimize, objective last)", "tpe (seed 1234)",
                 "asha (min_step 1, reduction 3)", "3.2/40 GPU-hours", "wall 12h00m",
                 "4/20 ended: 1 running, 2 complete, 1 pruned, 1 fail",
                 "best: trial 1  val_loss=0.2871  LR=0.00042 OPT=adam  (j-bbb)",
                 "best so far: █▁▁▁  0.4123 -> 0.2871 over 4 trials"):
        assert text in out
    bars = out.split("parameter importances")[1].splitlines()[1:3]
    assert bars[0].split()[0] == "LR" and bars[0].split()[-1] == "0.81"  # the most important first
    assert bars[1].split()[0] == "OPT" and bars[1].count("█") < bars[0].count("█")


def test_show_of_an_unknown_study_is_one_error_line_and_a_failing_exit() -> None:
    result = incl("study", "show", "s-nope")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == ["error: no study s-nope"]


def test_ls_shows_trials_ended_by_state_best_value_and_gpu_hours(fake_client: list[tuple[str, Any]]) -> None:
    result = incl("study", "ls", "--user", "ada")
    assert result.exit_code == 0, result.output
    header, row = result.output.splitlines()
    assert header.split()[:5] == ["ID", "NAME", "USER", "STATE", "TRIALS"]
    assert row.split()[:5] == ["s-3f9a1c", "resnet-sweep", "ada", "RUNNING", "4/20"]
    assert "1 running, 2 complete, 1 pruned, 1 fail" in row
    assert "0.2871" in row and "3.2" in row and re.search(r"\dh\d\dm ago", row)  # NOW was read at import
    assert fake_client == [("studies", "ada")]


@pytest.mark.parametrize(("args", "type_"), [(("study", "show", STUDY.id), GetStudyReply),
                                             (("study", "ls"), list[StudySummary]),
                                             (("study", "stop", STUDY.id), Study)])
def test_json_decodes_back_to_what_the_controller_answered(args: tuple[str, ...], type_: Any) -> None:
    result = incl(*args, "--json")
    assert result.exit_code == 0, result.output
    decoded = msgspec.json.decode(result.output, type=type_)
    expected = {GetStudyReply: REPLY, Study: msgspec.structs.replace(STUDY, state=StudyState.STOPPING)}
    assert decoded == expected.get(type_, [SUMMARY])


@pytest.mark.parametrize(("flags", "said"), [((), "its running trials finish first"),
                                             (("--cancel",), "its running trials are being cancelled")])
def test_stop_says_what_happens_to_the_running_trials(fake_client: list[tuple[str, Any]], flags: tuple[str, ...],
                                                      said: str) -> None:
    result = incl("study", "stop", STUDY.id, *flags)
    assert result.exit_code == 0, result.output
    assert result.output == f"{STUDY.id} is stopping: no new trials; {said}\n"
    assert fake_client == [("stop_study", (STUDY.id, bool(flags)))]


def test_ls_of_a_study_lists_its_trials_with_their_trial_number(fake_client: list[tuple[str, Any]]) -> None:
    result = incl("ls", "--study", STUDY.id)
    assert result.exit_code == 0, result.output
    header, row = result.output.splitlines()
    assert header.split()[:3] == ["ID", "TRIAL", "NAME"] and row.split()[:2] == ["j-bbb", "1"]
    assert fake_client == [("jobs_reply", STUDY.id)]


STUDY_YAML = """name: sweep
run: python3 train.py
hpo:
  metric: val_loss
  params:
    LR: {type: float, low: 1.0e-5, high: 0.1, log: true}
"""


def test_submit_of_a_study_spec_prints_the_study_id_alone(tmp_path: Path, fake_client: list[tuple[str, Any]]) -> None:
    (tmp_path / "study.yaml").write_text(STUDY_YAML)
    result = incl("submit", "-f", str(tmp_path / "study.yaml"))
    assert result.exit_code == 0, result.output
    assert result.output == f"{STUDY.id}\n"
    assert [name for name, _ in fake_client] == ["submit_study"]
    assert fake_client[0][1].hpo.metric == "val_loss"


def test_submit_of_a_study_as_json_prints_the_study_record(tmp_path: Path) -> None:
    (tmp_path / "study.yaml").write_text(STUDY_YAML)
    result = incl("submit", "-f", str(tmp_path / "study.yaml"), "--json")
    assert msgspec.json.decode(result.output, type=Study) == STUDY


@pytest.mark.parametrize(("bad", "field"), [
    ("    LR: {type: float, low: 0, high: 0.1, log: true}\n", "hpo.params.LR.low"),
    ("    LR: {type: float, low: 0.1, high: 0.001}\n", "hpo.params.LR"),
    ("    lr-rate: [1, 2]\n", "hpo.params.lr-rate"),
    ("    LR: {type: float, low: 0.001, high: 0.1}\n  sampler: bayes\n", "hpo.sampler"),
])
def test_a_bad_hpo_field_is_one_line_naming_it_and_nothing_is_submitted(tmp_path: Path, bad: str, field: str,
                                                                        fake_client: list[tuple[str, Any]]) -> None:
    (tmp_path / "study.yaml").write_text("run: python3 train.py\nhpo:\n  metric: val_loss\n  params:\n" + bad)
    result = incl("submit", "-f", str(tmp_path / "study.yaml"))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: invalid spec: {field}: "), result.output
    assert fake_client == []


def test_follow_of_a_study_is_refused_in_one_line_before_anything_is_submitted(
        tmp_path: Path, fake_client: list[tuple[str, Any]]) -> None:
    (tmp_path / "study.yaml").write_text(STUDY_YAML)
    result = incl("submit", "-f", str(tmp_path / "study.yaml"), "--follow")
    assert result.exit_code == 2
    assert result.output.strip() == "error: --follow follows a job; follow a study with `incl study show ID`"
    assert fake_client == []
