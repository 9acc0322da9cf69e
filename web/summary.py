"""An ended job's whole-run charts from its attempts' metric summaries (agent/metricsummary.py): one message read
per attempt instead of every point, so the first chart of a long run is as quick as a reload.

A summary keeps, per metric, the lowest, highest and first odd point of each of 512 to 1,024 buckets of the
attempt's points; reduced again to the chart's width here, they draw what the full series draws. Used only for
the whole range of a job that has ended, when every attempt has its summary as its subject's last message (a
running job, a multi-node one, one re-adopted after an agent crash, or one whose summary did not fit has not):
otherwise, and for every zoom, the points are read (incl.web.pointcache), and the server fills its cache with
them meanwhile, so the zoom that follows is quick too.
"""

from __future__ import annotations

from incl.bus.client import Client
from incl.proto.messages import TERMINAL, Job, MetricSummary, SeriesSummary
from incl.web.metrics import Chart, Series, downsample, json_number


async def summaries(client: Client, job: Job) -> list[MetricSummary] | None:
    """Every attempt's summary, or None when one has none (see the module's docstring)."""
    if job.state not in TERMINAL or not job.attempts or any(a.nodes for a in job.attempts):
        return None
    out = []
    for n in range(len(job.attempts)):
        summary = await client.metric_summary(job, n)
        if summary is None or not all(whole(s) for s in summary.series):
            return None
        out.append(summary)
    return out


def whole(s: SeriesSummary) -> bool:
    """Whether a series holds what an agent writes: as many of each column as kept points, no more than were
    logged, in the order they were logged (a message that decodes but is not so is read around, not drawn)."""
    n = len(s.index)
    ordered = all(a < b for a, b in zip(s.index, s.index[1:], strict=False))
    return (len(s.ts) == len(s.steps) == len(s.values) == n <= s.points and ordered
            and (not n or 0 <= s.index[0] <= s.index[-1] < s.points))


def charts(found: list[MetricSummary], by_time: bool, points: int) -> dict[str, Chart]:
    """Each metric's chart of the whole run, as `incl.web.metrics.chart` makes it from all the points: x is the
    step (a step-less point numbered by its place in the metric, counted on across attempts) or the time; `points`
    and `total` count every point logged, not the kept ones."""
    series: dict[str, Series] = {}
    logged: dict[str, int] = {}  # points of each metric in the attempts before (where the numbering goes on)
    for summary in found:
        for s in summary.series:
            before = logged.get(s.name, 0)
            into = series.setdefault(s.name, Series())
            for i, ts, step, value in zip(s.index, s.ts, s.steps, s.values, strict=True):
                into.append(ts if by_time else float(step if step is not None else before + i), value)
            logged[s.name] = before + s.points
    out = {}
    for name in sorted(series):
        xs, ys = downsample(series[name].x, series[name].y, points)
        total = logged[name]
        out[name] = Chart(x=list(xs), y=[json_number(v) for v in ys], points=total, total=total,
                          downsampled=len(xs) < total)
    return out
