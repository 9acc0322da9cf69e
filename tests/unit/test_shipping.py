"""Turning raw output into log lines: partial lines carried, endless lines cut, bytes passed through."""

from __future__ import annotations

from incl.agent.shipper import LineSplitter
from incl.controller.liveness import Deadlines
from incl.proto.messages import Stream

OUT, ERR = Stream.STDOUT, Stream.STDERR


def data(lines: list) -> list[bytes]:  # type: ignore[type-arg]
    return [line.data for line in lines]


def test_partial_lines_are_carried_per_stream() -> None:
    s = LineSplitter(100)
    assert data(s.feed(OUT, b"hel")) == []
    assert data(s.feed(ERR, b"oops\nhalf")) == [b"oops"]
    assert data(s.feed(OUT, b"lo\nworld\n")) == [b"hello", b"world"]
    assert [(x.stream, x.data) for x in s.flush()] == [(ERR, b"half")]


def test_very_long_lines_are_split_not_held_and_marked_partial() -> None:
    s = LineSplitter(10)
    first = s.feed(OUT, b"a" * 25)
    assert data(first) == [b"a" * 10, b"a" * 10] and all(x.partial for x in first)
    last = s.feed(OUT, b"b" * 3 + b"\n")
    assert data(last) == [b"aaaaabbb"] and not last[0].partial
    pieces = s.feed(OUT, b"c" * 23 + b"\n")
    assert [(x.data, x.partial) for x in pieces] == [(b"c" * 10, True), (b"c" * 10, True), (b"ccc", False)]


def test_binary_and_invalid_utf8_pass_through_untouched() -> None:
    s = LineSplitter(1000)
    blob = bytes(range(256)).replace(b"\n", b"")
    assert data(s.feed(OUT, blob + b"\n\xff\xfe\n\n")) == [blob, b"\xff\xfe", b""]


def test_deadlines_expire_once_and_in_order() -> None:
    d = Deadlines()
    d.beat("a", now=0, within=5)
    d.beat("b", now=0, within=3)
    assert d.next_due() == 3
    assert d.expired(2.9) == []
    d.beat("b", now=2.9, within=3)  # a heartbeat moves the deadline
    assert d.expired(5.0) == ["a"]
    assert d.expired(5.0) == [] and "a" not in d
    assert d.expired(6.0) == ["b"]
