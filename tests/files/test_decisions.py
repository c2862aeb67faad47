"""The pure decisions: byte ranges, rotation verdicts, status moves, merging, sheet parsing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workmesh.files.downloads import DownloadLimiter, TooManyDownloaders
from workmesh.files.ranges import BadRange, ByteRange, parse_range
from workmesh.files.rotation import ReferState, RotationSchedule, Verdict, judge
from workmesh.files.statuses import FileStatus, Severity, may_move, worst
from workmesh.files.violations import BadSheet, Row, parse, parse_csv_text

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@given(size=st.integers(1, 10**12), data=st.data())
def test_a_valid_range_lies_inside_the_file(size: int, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, size - 1))
    end = data.draw(st.integers(start, size * 2))
    got = parse_range(f"bytes={start}-{end}", size)
    assert got == ByteRange(start, min(end, size - 1))
    assert 1 <= got.length <= size


@given(size=st.integers(1, 10**9), suffix=st.integers(1, 2 * 10**9))
def test_a_suffix_range_is_the_last_bytes(size: int, suffix: int) -> None:
    got = parse_range(f"bytes=-{suffix}", size)
    assert got is not None
    assert got.end == size - 1
    assert got.length == min(size, suffix)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("bytes=100-", "past the end"),
        ("bytes=5-2", "ends before it starts"),
        ("bytes=0-1,5-6", "only one range"),
        ("items=0-1", "only 'Range: bytes"),
        ("bytes=a-b", "malformed"),
        ("bytes=-0", "selects nothing"),
    ],
)
def test_bad_ranges_say_why(header: str, reason: str) -> None:
    with pytest.raises(BadRange, match=reason):
        parse_range(header, 100)


def test_no_range_header_means_the_whole_file() -> None:
    assert parse_range(None, 10) is None
    assert ByteRange(0, 9).content_range(10) == "bytes 0-9/10"


def state(generation: int = 3, expires_in: float = 60, stopped: str | None = None) -> ReferState:
    return ReferState(generation, NOW + timedelta(seconds=expires_in), stopped)


def test_only_the_current_generation_renews() -> None:
    assert judge(state(), 3, NOW, redelivered=False) is Verdict.RENEW
    assert judge(state(), 2, NOW, redelivered=False) is Verdict.IGNORE  # duplicate, done
    assert judge(state(), 9, NOW, redelivered=False) is Verdict.IGNORE  # from a future? stale
    assert judge(state(), 1, NOW, redelivered=True) is Verdict.IGNORE


def test_a_redelivered_renewal_already_committed_is_announced_again() -> None:
    assert judge(state(), 2, NOW, redelivered=True) is Verdict.RESEND


def test_renewal_ends_at_the_time_limit_and_after_a_stop() -> None:
    assert judge(state(expires_in=0), 3, NOW, redelivered=False) is Verdict.EXPIRE
    assert judge(state(expires_in=-5), 3, NOW, redelivered=False) is Verdict.EXPIRE
    assert judge(state(stopped="downloaded"), 3, NOW, redelivered=False) is Verdict.IGNORE
    assert judge(state(stopped="downloaded"), 2, NOW, redelivered=True) is Verdict.IGNORE


def test_a_cycle_is_lifetime_long_and_renews_each_interval() -> None:
    expires, due = RotationSchedule(interval=90, lifetime=600).cycle(NOW)
    assert expires - NOW == timedelta(minutes=10)
    assert due - NOW == timedelta(seconds=90)


def test_statuses_move_forward_and_to_error() -> None:
    assert may_move(FileStatus.NONE, FileStatus.PROCESSING)
    assert may_move(FileStatus.PROCESSING, FileStatus.READY)
    assert may_move(FileStatus.READY, FileStatus.DB_READY)
    assert not may_move(FileStatus.NONE, FileStatus.DB_READY)
    assert not may_move(FileStatus.DB_READY, FileStatus.PROCESSING)
    assert all(may_move(s, FileStatus.ERROR) for s in FileStatus)


@given(st.lists(st.sampled_from(list(Severity))))
def test_the_merged_severity_is_the_gravest(severities: list[Severity]) -> None:
    merged = worst(severities)
    order = list(Severity)
    assert all(order.index(merged) >= order.index(s) for s in severities)
    assert merged in severities or merged is Severity.NONE


def test_the_limiter_counts_each_file_alone() -> None:
    limiter = DownloadLimiter(2)
    with limiter.slot("a"), limiter.slot("a"):
        with pytest.raises(TooManyDownloaders), limiter.slot("a"):
            pass
        with limiter.slot("b"):
            assert (limiter.active("a"), limiter.active("b")) == (2, 1)
    assert limiter.active("a") == 0


def test_sheets_need_code_and_name_and_later_rows_win() -> None:
    rows = parse_csv_text("Name,Code\nSmoking,s\n,\nSmoking again,s\nDrinking,d\n")
    assert rows == [Row("s", "Smoking again", None), Row("d", "Drinking", None)]
    assert parse([["code", "name"], [12.0, "Twelve"]], "x") == [Row("12", "Twelve", None)]
    with pytest.raises(BadSheet, match="row 2: both code and name"):
        parse_csv_text("code,name\n,x\n")
    with pytest.raises(BadSheet, match="first row must name"):
        parse_csv_text("a,b\n")
