"""The Compare table (incl.web.compare): rows marked where the values shown differ, the last value of each metric,
and the ids of ?jobs= checked."""

from __future__ import annotations

import math

import pytest

from incl.proto.errors import BadRequest
from incl.proto.messages import Job, JobState, TrialRef
from incl.proto.spec import load_spec
from incl.web.compare import MISSING, finals, job_ids, table
from incl.web.metrics import Series


def job(job_id: str, trial: TrialRef | None = None, **spec: object) -> Job:
    return Job(id=job_id, spec=load_spec({"run": "python train.py", **spec}), user="ann", state=JobState.SUCCEEDED,
               submitted_at=1.0, updated_at=2.0, trial=trial)


def series(*ys: float) -> Series:
    s = Series()
    for i, y in enumerate(ys):
        s.append(float(i * 10), y)
    return s


def test_rows_differ_only_where_the_values_shown_differ() -> None:
    a = job("j-a", TrialRef(study_id="s-1", number=0, params={"lr": 0.1, "opt": "adam", "deep": True}),
            env={"MODE": "fast", "SEED": "1"})
    b = job("j-b", TrialRef(study_id="s-1", number=1, params={"lr": 0.01, "opt": "adam"}), env={"MODE": "fast"})
    rows = {(r.kind, r.key): r for r in table([a, b], [finals({"loss": series(3.0, 0.5)}),
                                                       finals({"loss": series(2.0, 0.5), "acc": series(0.9)})])}
    assert rows["param", "lr"].values == ["0.1", "0.01"] and rows["param", "lr"].differs
    assert rows["param", "opt"].values == ["adam", "adam"] and not rows["param", "opt"].differs
    assert rows["param", "deep"].values == ["true", MISSING] and rows["param", "deep"].differs
    assert not rows["env", "MODE"].differs and rows["env", "SEED"].values == ["1", MISSING]
    assert rows["job", "study"].values == ["s-1 #0", "s-1 #1"] and not rows["job", "run"].differs
    # The last value logged, not the lowest: both ended at 0.5.
    assert rows["metric", "loss"].values == ["0.5", "0.5"] and not rows["metric", "loss"].differs
    assert rows["metric", "acc"].values == [MISSING, "0.9"]
    assert [r.kind for r in rows.values()] == sorted([r.kind for r in rows.values()], key=["job", "param", "env",
                                                                                               "metric"].index)


def test_a_final_value_keeps_its_step_and_nan_as_a_string() -> None:
    [(name, final)] = finals({"loss": series(1.0, math.nan)}).items()
    assert (name, final.value, final.step, final.points) == ("loss", "NaN", 10.0, 2)
    assert finals({"empty": Series()}) == {}


@pytest.mark.parametrize("raw", [None, "", " , ,", ",".join(f"j-{i}" for i in range(11))])
def test_none_or_too_many_jobs_is_a_bad_query_naming_jobs(raw: str | None) -> None:
    with pytest.raises(BadRequest) as err:
        job_ids(raw, 10)
    assert err.value.field == "jobs"


def test_job_ids_keep_their_order_once_each() -> None:
    assert job_ids(" j-b, j-a ,j-b", 10) == ["j-b", "j-a"]
