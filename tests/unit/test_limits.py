"""Bounds on what goes on the bus (pure): tails, reasons, labels, pages, and the record's attempts."""

from __future__ import annotations

from incl.controller import state
from incl.controller.agents import missing_attempts
from incl.controller.paging import page
from incl.proto import limits
from incl.proto.messages import Job, JobState
from incl.proto.spec import load_spec


def test_a_tail_keeps_the_last_whole_lines_that_fit_and_says_how_many_it_dropped() -> None:
    lines = [f"line {i}" for i in range(2000)]
    tail = limits.bound_tail(lines)
    assert tail[-1] == "line 1999"
    assert tail[0].startswith("[") and "earlier lines not shown" in tail[0]
    kept = tail[1:]
    assert kept == lines[-len(kept):]  # cut at a line boundary, in order
    assert sum(len(t.encode()) + 1 for t in kept) <= limits.TAIL_MAX_BYTES


def test_a_long_line_keeps_its_end_with_a_marker() -> None:
    line = "a" * 60_000 + "Traceback: the end"
    (cut,) = limits.bound_tail([line])
    assert cut.endswith("Traceback: the end") and "line cut" in cut
    assert len(cut.encode()) < limits.TAIL_LINE_MAX_BYTES + 100


def test_a_short_tail_is_unchanged() -> None:
    assert limits.bound_tail(["a", "b"]) == ["a", "b"]
    assert limits.bound_tail([]) == []


def test_multibyte_text_is_cut_on_a_character_boundary() -> None:
    (cut,) = limits.bound_tail(["é" * 5000])
    cut.encode()  # valid text
    assert cut.endswith("é")


def test_reasons_and_labels_are_bounded_with_the_reason() -> None:
    assert limits.bound_reason("x" * 10) == "x" * 10
    long = limits.bound_reason("x" * 10_000)
    assert long is not None and len(long) < limits.REASON_MAX_CHARS + 50 and "cut" in long
    assert limits.check_labels({"zone": "eu"}) is None
    assert "over the limit of 64" in (limits.check_labels({f"k{i}": "v" for i in range(65)}) or "")
    assert "over the limit of 256" in (limits.check_labels({"big": "v" * 257}) or "")


def test_pages_cover_every_item_once_in_order_under_the_byte_bound() -> None:
    items = [f"{i:05d}" + "x" * 100 for i in range(1234)]
    seen, after, pages = [], None, 0
    while True:
        chunk, after = page(items, key=lambda s: s[:5], after=after, limit=None, max_bytes=10_000)
        seen += chunk
        pages += 1
        assert sum(len(c) + 2 for c in chunk) <= 10_000
        if after is None:
            break
    assert seen == items and pages > 10


def test_a_page_holds_at_least_one_item_however_large() -> None:
    chunk, after = page(["x" * 5000, "y"], key=lambda s: s, after=None, limit=None, max_bytes=10)
    assert chunk == ["x" * 5000] and after == "x" * 5000


def test_missing_attempts_keep_their_first_time_and_forget_the_found() -> None:
    before = {("j1", 1): 10.0, ("j2", 1): 12.0}
    assert missing_attempts(before, {("j1", 1), ("j3", 2)}, 20.0) == {("j1", 1): 10.0, ("j3", 2): 20.0}


def _running_job(attempts: int = 1) -> Job:
    job = Job(id="j1", spec=load_spec({"run": "x", "retry": {"max_attempts": 50, "on_failure": True}}),
              user="u", state=JobState.QUEUED, submitted_at=0.0, updated_at=0.0)
    for n in range(attempts):
        job = state.assign(job, "a1", float(n))
        job = state.running(job, n + 1, float(n), float(n))
        if n < attempts - 1:
            job = state.exited(job, n + 1, float(n), exit_code=1, reason="boom", cancelled=False,
                               tail=["x" * 900] * 10, ended_at=float(n))
    return job


def test_the_record_keeps_only_the_last_attempts_tails() -> None:
    job = _running_job(attempts=30)
    with_tails = [a.number for a in job.attempts if a.tail]
    assert len(with_tails) <= limits.TAILS_KEPT and with_tails[-1] == 29
    assert all(sum(len(t) for t in a.tail) <= limits.TAIL_MAX_BYTES + 200 for a in job.attempts)


def test_an_exit_after_fencing_is_a_lost_attempt_and_the_job_is_requeued() -> None:
    job = state.exited(_running_job(), 1, 5.0, exit_code=-15, reason="lost contact", cancelled=False, tail=[],
                       ended_at=5.0, fenced=True)
    assert job.state is JobState.QUEUED and job.attempts[0].state is JobState.LOST
