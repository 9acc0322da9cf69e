"""A secret's value split across two writes of the job is still redacted, on stdout and on stderr, also where a
very long line is cut into pieces right through it (the splitter as the runner builds it)."""

from __future__ import annotations

import pytest

from incl.agent.runner import Redactor
from incl.agent.shipper import LineSplitter
from incl.proto.messages import LogLine, Stream

VALUE = "tok-5f3a9c1e"


def splitter(max_line: int) -> LineSplitter:
    redact = Redactor({"API_KEY": VALUE})
    return LineSplitter(max_line, redact, hold=redact.longest - 1)


def data(lines: list[LogLine]) -> bytes:
    return b"".join(line.data + (b"" if line.partial else b"\n") for line in lines)


@pytest.mark.parametrize("stream", [Stream.STDOUT, Stream.STDERR])
def test_a_value_split_across_two_writes_is_redacted(stream: Stream) -> None:
    s = splitter(1000)
    assert s.feed(stream, b"key is tok-5f") == []
    assert [line.data for line in s.feed(stream, b"3a9c1e!\n")] == [b"key is <secret:API_KEY>!"]
    assert s.feed(stream, b"tail tok-5f3a") == [] and [line.data for line in s.flush()] == [b"tail tok-5f3a"]


@pytest.mark.parametrize("stream", [Stream.STDOUT, Stream.STDERR])
def test_a_long_line_cut_through_a_value_leaks_no_part_of_it(stream: Stream) -> None:
    s = splitter(16)
    first = s.feed(stream, b"x" * 12 + b"tok-5f")  # over the limit, cut at 16: inside the value
    rest = s.feed(stream, b"3a9c1e and more text\n")
    out = data(first + rest)
    assert out == b"x" * 12 + b"<secret:API_KEY> and more text\n"
    assert all(len(line.data) <= 16 for line in first + rest)


@pytest.mark.parametrize("size", [1, 5, 7, 13, 16, 40])
def test_endless_output_in_any_chunk_size_never_shows_the_value(size: int) -> None:
    """A line with no end, in pieces of the limit, with the value everywhere: every chunk boundary and cut."""
    text = b"".join(b"%d:" % i + VALUE.encode() + b"." * (i % 9) for i in range(60))
    s = splitter(24)
    out = [line for i in range(0, len(text), size) for line in s.feed(Stream.STDERR, text[i:i + size])]
    out += s.flush()
    shipped = b"".join(line.data for line in out)
    assert shipped == Redactor({"API_KEY": VALUE})(text)
    assert VALUE[:6].encode() not in shipped and VALUE[-6:].encode() not in shipped
