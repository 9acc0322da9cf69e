"""The Compare page's table (pure): jobs side by side, one row per param, env variable and final metric, each
row marked where the jobs differ.

A row's values are what the page shows (strings, MISSING where a job has none), so "differs" means exactly what a
reader sees differ. A final metric is the last value the job logged for it (NaN and infinities as the strings
`incl metrics --json` writes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from incl.proto.messages import Job
from incl.web.errors import BadQuery
from incl.web.metrics import Series, json_number

MISSING = "\u2013"  # an en dash, as the other pages show a value that is not there


class Row(msgspec.Struct, frozen=True):
    kind: str  # "job" (name, state, ...), "param" (HPO), "env", "metric" (final value)
    key: str
    values: list[str]
    differs: bool


class Final(msgspec.Struct, frozen=True):
    value: float | str
    step: float  # its x: the step, or the count of points before it
    points: int


def job_ids(raw: str | None, most: int) -> list[str]:
    """The ids of `?jobs=a,b`, in order, once each; BadQuery naming `jobs` for none or too many."""
    ids = list(dict.fromkeys(i.strip() for i in (raw or "").split(",") if i.strip()))
    if not ids:
        raise BadQuery("jobs", "name at least one job id: ?jobs=j-a,j-b")
    if len(ids) > most:
        raise BadQuery("jobs", f"{len(ids)} jobs; at most {most} can be compared")
    return ids


def finals(series: Mapping[str, Series]) -> dict[str, Final]:
    return {name: Final(value=json_number(s.y[-1]), step=s.x[-1], points=len(s.x)) for name, s in series.items() if s.x}


def _text(value: object, short: bool = False) -> str:
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    if short and isinstance(value, float):  # a final metric: six significant digits
        return f"{value:.6g}"
    return str(value)


def _row(kind: str, key: str, values: list[str]) -> Row:
    return Row(kind=kind, key=key, values=values, differs=len(set(values)) > 1)


def table(jobs: Sequence[Job], final: Sequence[Mapping[str, Final]]) -> list[Row]:
    """The rows, jobs in the order given: who and what each is, then HPO params, env and final metrics (each
    group sorted by name)."""
    rows = [_row("job", "name", [j.spec.name or MISSING for j in jobs]),
            _row("job", "state", [str(j.state) for j in jobs]),
            _row("job", "user", [j.user for j in jobs]),
            _row("job", "run", [j.spec.run for j in jobs]),
            _row("job", "study", [f"{j.trial.study_id} #{j.trial.number}" if j.trial else MISSING for j in jobs])]
    params = sorted({k for j in jobs if j.trial for k in j.trial.params})
    rows += [_row("param", k, [_text(j.trial.params.get(k)) if j.trial and k in j.trial.params else MISSING
                               for j in jobs]) for k in params]
    env = sorted({k for j in jobs for k in j.spec.env})
    rows += [_row("env", k, [j.spec.env.get(k, MISSING) for j in jobs]) for k in env]
    metrics = sorted({k for f in final for k in f})
    rows += [_row("metric", k, [_text(f[k].value, short=True) if k in f else MISSING for f in final]) for k in metrics]
    return rows
