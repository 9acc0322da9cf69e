"""A secret's value never leaves the agent in the job's log lines, its tail or its exit reason."""

from __future__ import annotations

from incl.agent.runner import Redactor
from incl.proto.messages import LogLine, Stream


def test_each_value_is_replaced_by_its_name() -> None:
    redact = Redactor({"API_KEY": "s3cr3t-token", "DB_PASSWORD": "hunter2"})
    assert redact(b"key=s3cr3t-token pw=hunter2 again:hunter2") == \
        b"key=<secret:API_KEY> pw=<secret:DB_PASSWORD> again:<secret:DB_PASSWORD>"
    assert redact(b"nothing to hide") == b"nothing to hide"


def test_the_longest_value_wins_where_one_contains_another() -> None:
    redact = Redactor({"SHORT": "abc", "LONG": "xxabcxx"})
    assert redact(b"xxabcxx abc") == b"<secret:LONG> <secret:SHORT>"


def test_values_are_matched_as_bytes_not_as_patterns() -> None:
    redact = Redactor({"RE": "a.b*c", "UTF": "pässwörd"})
    assert redact(b"axbbc a.b*c") == b"axbbc <secret:RE>"
    assert redact("pässwörd".encode()) == b"<secret:UTF>"


def test_short_and_empty_values_are_left_alone() -> None:
    """A one- or two-character value would mangle every line it occurs in and hide next to nothing."""
    redact = Redactor({"EMPTY": "", "ONE": "1", "TWO": "no", "OK": "yes"})
    assert redact(b"1 no yes") == b"1 no <secret:OK>"
    assert Redactor({})(b"anything") == b"anything"


def test_lines_keep_their_stream_time_and_partial_flag() -> None:
    redact = Redactor({"TOKEN": "tok-123"})
    line = LogLine(ts=1.5, stream=Stream.STDERR, data=b"using tok-123", partial=True)
    untouched = LogLine(ts=2.0, stream=Stream.STDOUT, data=b"fine")
    out = redact.lines([line, untouched])
    assert out[0] == LogLine(ts=1.5, stream=Stream.STDERR, data=b"using <secret:TOKEN>", partial=True)
    assert out[1] is untouched
    assert redact.text("auth failed for tok-123") == "auth failed for <secret:TOKEN>"
