"""The pure parts: query encoding, PHP arrays, record precedence, phones, limits' arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from clients.bitrix24 import Command, LeakyBucket, OperatingBudget
from clients.bitrix24.commands import build_query, by_key
from schemas.receptions import Reception
from tests.bitrix24.fake import parse_php_query, php_array
from workmesh.bitrix24 import Bitrix24Settings, planning

T0 = datetime(2026, 1, 1, tzinfo=UTC)

keys = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ_@", min_size=1, max_size=12)
leaves = st.text(max_size=20)
params = st.recursive(
    leaves,
    lambda inner: (
        st.dictionaries(keys, inner, min_size=1, max_size=4)
        | st.lists(inner, min_size=1, max_size=4)
    ),
    max_leaves=8,
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, params, max_size=3))
def test_a_query_reads_back_as_it_was_written(value: dict[str, object]) -> None:
    assert parse_php_query(build_query(value)) == value


def test_a_command_is_written_as_bitrix24_reads_it() -> None:
    command = planning.find_contact("+79001234567")
    assert command.as_cmd() == (
        "crm.contact.list?filter%5BPHONE%5D=%2B79001234567&select%5B0%5D=ID&order%5BID%5D=ASC"
    )
    assert Command("crm.deal.add").creates
    assert not Command("crm.deal.update").creates


@given(st.dictionaries(st.text(max_size=3), st.integers(), max_size=5))
def test_php_arrays_read_back_by_key_whether_list_or_map(items: dict[str, int]) -> None:
    assert by_key(php_array(items)) == items


def test_by_key_reads_an_empty_php_array() -> None:
    assert by_key([]) == {}
    assert by_key(None) == {}


def record(ident: str, minutes: int, **extra: object) -> Reception:
    return Reception.model_validate(
        {
            "ident_id": ident,
            "phone": "+79001234567",
            "patient_name": "P",
            "starts_at": T0.isoformat(),
            "updated_at": (T0 + timedelta(minutes=minutes)).isoformat(),
            **extra,
        }
    )


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 5)), min_size=1, max_size=20))
def test_the_newest_record_of_each_ident_wins_and_of_equals_the_last(
    items: list[tuple[str, int]],
) -> None:
    records = [record(ident, minutes) for ident, minutes in items]
    winners = planning.latest_per_ident(records)
    assert set(winners) == {ident for ident, _ in items}
    for ident, index in winners.items():
        newest = max(m for i, m in items if i == ident)
        assert items[index][1] == newest
        assert all(not (i == ident and m == newest) for i, m in items[index + 1 :])


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("+7 (900) 123-45-67", "+79001234567"),
        ("8 900 123 45 67", "+79001234567"),
        ("380 44 123 4567", "+380441234567"),
    ],
)
def test_phones_are_written_one_way(given: str, stored: str) -> None:
    assert record("a", 0, phone=given).phone == stored


@pytest.mark.parametrize("phone", ["12-34", "+7 900 abc", "1" * 16])
def test_a_phone_that_is_no_phone_is_refused(phone: str) -> None:
    with pytest.raises(ValidationError, match="10 to 15 digits"):
        record("a", 0, phone=phone)


def test_deal_fields_change_their_hash_only_when_they_change() -> None:
    settings = planning.DealSettings("UF_CRM_IDENT_ID", {"confirmed": "PREPARATION"})
    base = planning.deal_fields(record("a", 0), 7, settings)
    same = planning.deal_fields(record("a", 9, comment="other"), 7, settings)
    moved = planning.deal_fields(record("a", 0, status="confirmed"), 7, settings)
    assert planning.fields_hash(base) == planning.fields_hash(same)
    assert planning.fields_hash(base) != planning.fields_hash(moved)
    assert moved["STAGE_ID"] == "PREPARATION"
    assert moved["UF_CRM_IDENT_ID"] == "a"


def test_the_bucket_makes_a_request_wait_for_its_drain() -> None:
    now = [0.0]
    bucket = LeakyBucket(3, 2.0, clock=lambda: now[0])
    for _ in range(2):
        bucket.take()
    assert bucket.delay() == 0
    bucket.take()
    assert bucket.delay() == pytest.approx(0.5)  # full: one unit drains in 0.5 s
    now[0] = 0.5
    assert bucket.delay() == 0


def test_the_budget_waits_past_the_threshold_until_the_reset() -> None:
    now = [1000.0]
    budget = OperatingBudget(100, margin=0.1, blocked_pause=30, clock=lambda: now[0])
    budget.report("crm.deal.add", 89.0, 1060.0)
    assert budget.delay(["crm.deal.add"]) == 0
    budget.report("crm.deal.add", 90.0, 1060.0)
    assert budget.delay(["crm.deal.add", "batch"]) == pytest.approx(60.0)
    assert budget.delay(["crm.deal.list"]) == 0
    # A 429 without a reset time blocks the method for the configured pause.
    assert budget.blocked("crm.deal.list", None) == pytest.approx(1030.0)


def test_settings_take_a_webhook_or_a_portal_with_a_token() -> None:
    hook = Bitrix24Settings(webhook_url="https://x.bitrix24.ru/rest/1/abc/")
    assert hook.endpoint().url("batch") == "https://x.bitrix24.ru/rest/1/abc/batch.json"
    oauth = Bitrix24Settings(portal_url="https://x.bitrix24.ru/rest", oauth_token="t")
    assert oauth.endpoint().body({"halt": 0}) == {"halt": 0, "auth": "t"}
    assert not Bitrix24Settings().configured
    with pytest.raises(ValidationError, match="go together"):
        Bitrix24Settings(portal_url="https://x.bitrix24.ru/rest/")
    with pytest.raises(ValidationError, match="not both"):
        Bitrix24Settings(
            webhook_url="https://x/rest/1/a/", portal_url="https://x/", oauth_token="t"
        )
    with pytest.raises(ValidationError, match="less than or equal to 50"):
        Bitrix24Settings(batch_size=51)


def test_an_empty_webhook_variable_means_not_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    # compose.yaml passes ${WORKMESH_BITRIX24_WEBHOOK_URL:-}: "" when the operator set none.
    monkeypatch.setenv("WORKMESH_BITRIX24_WEBHOOK_URL", "")
    assert not Bitrix24Settings().configured
    monkeypatch.setenv("WORKMESH_BITRIX24_WEBHOOK_URL", "https://x.bitrix24.ru/rest/1/abc/")
    assert Bitrix24Settings().configured
