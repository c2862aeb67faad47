"""Reception events through the real RabbitMQ and database into the fake Bitrix24 portal."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import aio_pika
import pytest
from sqlalchemy import select

from handlers.bitrix24 import RECEPTIONS_QUEUE
from models.bitrix24 import Bitrix24Contact, Bitrix24Deal
from schemas.receptions import Reception
from tests.bitrix24.conftest import T0, dead_letters, fast_settings, publish, reception
from tests.bitrix24.fake import FakeBitrix24
from tests.conftest import Harness, eventually
from workmesh.bitrix24 import Bitrix24Capability, Bitrix24Settings
from workmesh.bitrix24.planning import digest

pytestmark = pytest.mark.e2e


def synced(fake: FakeBitrix24, idents: list[str], comments: int = 1) -> bool:
    for ident in idents:
        deals = fake.deal_by_ident(ident)
        if len(deals) != 1 or len(fake.comments_on(deals[0]["ID"])) != comments:
            return False
    return True


def assert_no_duplicates(fake: FakeBitrix24) -> None:
    phones = Counter(p["VALUE"] for c in fake.contacts.values() for p in c["PHONE"])
    assert [p for p, n in phones.items() if n > 1] == []
    idents = Counter(d["UF_CRM_IDENT_ID"] for d in fake.deals.values())
    assert [i for i, n in idents.items() if n > 1] == []
    for deal in fake.deals.values():
        texts = fake.comments_on(deal["ID"])
        assert len(texts) == len(set(texts)), f"a comment twice on deal {deal['ID']}: {texts}"


async def test_events_become_contacts_deals_and_comments(
    harness: Harness, fake: FakeBitrix24
) -> None:
    # Given a running bitrix24 role
    capability = Bitrix24Capability(fast_settings(fake))
    mesh = await harness.start("bitrix24", capabilities=[capability])
    idents = [f"rec-{n}" for n in range(1, 8)]

    # When reception events arrive (two share a patient)
    await publish(
        harness.amqp_url,
        *[reception(i) for i in idents],
        reception("rec-100", phone="+79000000001", patient_name="Patient rec-1"),
    )

    # Then each becomes a deal with its comment, on one contact per phone
    await eventually(lambda: synced(fake, [*idents, "rec-100"]), message="records synced")
    deal = fake.deal_by_ident("rec-1")[0]
    contact = fake.contacts_with_phone("+79000000001")
    assert len(contact) == 1
    assert deal["CONTACT_ID"] == contact[0]["ID"]
    assert fake.deal_by_ident("rec-100")[0]["CONTACT_ID"] == contact[0]["ID"]
    assert deal["STAGE_ID"] == "NEW"
    assert fake.comments_on(deal["ID"]) == ["first visit of rec-1"]
    # ... in full batches: every look-up of the first batch went in one request
    assert max(fake.batch_sizes) > 2
    async with mesh.sessions() as session:
        cached = (await session.scalars(select(Bitrix24Deal))).all()
        contacts = (await session.scalars(select(Bitrix24Contact))).all()
    assert {d.ident_id for d in cached} == {*idents, "rec-100"}
    assert all(d.pending_comment_hash is None and d.comment_hash for d in cached)
    assert len(contacts) == 7

    # When the same records come again, and one with a changed comment and status
    requests_before = sum(fake.requests.values())
    await publish(
        harness.amqp_url,
        *[reception(i) for i in idents],
        reception(
            "rec-2",
            comment="called back: moved to 11:00",
            status="confirmed",
            updated_at=(T0 + timedelta(minutes=5)).isoformat(),
        ),
    )

    # Then only the changed comment is added and only its deal updated
    deal2 = fake.deal_by_ident("rec-2")[0]
    await eventually(lambda: len(fake.comments_on(deal2["ID"])) == 2, message="changed comment")
    assert fake.comments_on(deal2["ID"]) == ["first visit of rec-2", "called back: moved to 11:00"]
    assert deal2["STAGE_ID"] == "PREPARATION"
    await eventually(
        lambda: capability_outcomes(harness, "unchanged") >= len(idents) - 1,
        message="repeated records counted unchanged",
    )
    assert synced(fake, [i for i in idents if i != "rec-2"])
    # The cache answered every look-up: the repeats cost one update and one comment.
    assert fake.commands["crm.contact.list"] == 7
    assert sum(fake.requests.values()) - requests_before <= 3
    assert_no_duplicates(fake)
    assert fake.violations == []
    # And the process exports what it did
    status, text = await harness.api("GET", "/metrics", token=None)
    assert status == 200
    assert 'workmesh_bitrix24_commands_total{method="crm.timeline.comment.add"} 9.0' in text
    assert "workmesh_bitrix24_batch_fill_bucket" in text
    assert 'workmesh_bitrix24_phase_seconds_count{phase="batch_find_contacts"}' in text


def capability_outcomes(harness: Harness, outcome: str) -> float:
    value = harness.meshes[0].metrics.registry.get_sample_value(
        "workmesh_bitrix24_records_total", {"outcome": outcome}
    )
    return value or 0.0


async def test_many_records_keep_within_the_portals_limits(
    harness: Harness, fake: FakeBitrix24
) -> None:
    # Given a portal with a small bucket and some latency. The client keeps a margin below
    # the portal's bucket for requests that arrive closer together than they were sent: 2
    # requests at 10/s absorb 200 ms of such jitter (the defaults, 2 at 2/s, absorb 1 s). A
    # margin of 1 at 25/s (40 ms) failed once on a loaded 2-core CI machine.
    fake.limits.bucket_capacity, fake.limits.bucket_drain = 8, 10.0
    fake.limits.latency = 0.02
    capability = Bitrix24Capability(fast_settings(fake, bucket_margin=2))
    await harness.start("bitrix24", capabilities=[capability])
    idents = [f"rec-{n}" for n in range(1, 301)]

    # When 300 records arrive at once
    await publish(harness.amqp_url, *[reception(i) for i in idents])

    # Then all are synced, in batches of at most 50 commands, and nothing was refused
    await eventually(lambda: synced(fake, idents), timeout=60, message="300 records synced")
    assert max(fake.batch_sizes) <= 50
    assert fake.violations == []
    assert_no_duplicates(fake)
    # Packed: far fewer requests than commands.
    assert sum(fake.requests.values()) * 5 < sum(fake.commands.values())


async def test_refusals_are_retried_and_duplicate_nothing(
    harness: Harness, fake: FakeBitrix24
) -> None:
    # Given a client that believes the bucket is much larger than it is, and a proxy that
    # now and then answers a 502 page after the portal did the work
    fake.limits.bucket_capacity, fake.limits.bucket_drain = 3, 30.0
    fake.limits.garbage_every = 7
    settings = fast_settings(fake, bucket_capacity=200, bucket_drain=500.0, batch_size=10)
    await harness.start("bitrix24", capabilities=[Bitrix24Capability(settings)])
    idents = [f"rec-{n}" for n in range(1, 61)]

    # When records arrive
    await publish(harness.amqp_url, *[reception(i) for i in idents])

    # Then the portal refused some requests (503), the client retried them, and every record
    # ends synced exactly once, though some creates had to be found by look-up afterwards
    await eventually(lambda: synced(fake, idents), timeout=60, message="records synced")
    assert any("QUERY_LIMIT_EXCEEDED" in v for v in fake.violations)
    assert_no_duplicates(fake)
    assert len(fake.contacts) == 60


async def test_crash_between_commit_and_ack_duplicates_nothing(
    harness: Harness, fake: FakeBitrix24
) -> None:
    # Given a process that dies after each record's commit, before its ack, the first time
    capability = Bitrix24Capability(fast_settings(fake))
    crashed: set[str] = set()

    async def die_once(record: Reception) -> None:
        if record.ident_id not in crashed:
            crashed.add(record.ident_id)
            raise RuntimeError("killed before the ack")

    capability.before_ack = die_once
    await harness.start("bitrix24", capabilities=[capability])
    idents = [f"rec-{n}" for n in range(1, 21)]

    # When records arrive, are synced, and come back unacknowledged
    await publish(harness.amqp_url, *[reception(i) for i in idents])

    # Then the redelivered records change nothing in Bitrix24
    await eventually(lambda: crashed == set(idents), message="every record crashed once")
    await eventually(
        lambda: capability_outcomes(harness, "unchanged") >= len(idents),
        message="redeliveries seen",
    )
    assert synced(fake, idents)
    assert len(fake.contacts) == 20
    assert_no_duplicates(fake)


async def test_comment_sent_but_not_committed_is_not_sent_again(
    harness: Harness, fake: FakeBitrix24
) -> None:
    # Given a deal synced once
    await harness.start("bitrix24", capabilities=[Bitrix24Capability(fast_settings(fake))])
    await publish(harness.amqp_url, reception("rec-1"))
    await eventually(lambda: synced(fake, ["rec-1"]), message="first sync")
    deal = fake.deal_by_ident("rec-1")[0]

    # When a changed comment reaches the timeline but its answer is lost (a 502 page after
    # the work was done), so the sync never commits
    fake.lose_answer_to.append("crm.timeline.comment.add")
    await publish(
        harness.amqp_url,
        reception("rec-1", comment="changed", updated_at=(T0 + timedelta(minutes=1)).isoformat()),
    )

    # Then the record comes back, finds the comment on the timeline, and adds it no more
    async def committed() -> bool:
        async with harness.meshes[0].sessions() as session:
            row = await session.get(Bitrix24Deal, "rec-1")
        return row is not None and row.comment_hash == digest("changed")

    await eventually(committed, message="the retry committed the comment's hash")
    assert fake.commands["crm.timeline.comment.list"] == 1
    assert fake.comments_on(deal["ID"]) == ["first visit of rec-1", "changed"]


async def test_bad_records_are_dead_lettered_with_a_reason(
    harness: Harness, fake: FakeBitrix24
) -> None:
    # Given a portal that refuses one phone number
    fake.refuse_phones.add("+79000000003")
    await harness.start("bitrix24", capabilities=[Bitrix24Capability(fast_settings(fake))])

    # When good and bad records arrive together
    await publish(
        harness.amqp_url,
        reception("rec-1"),
        reception("rec-2", phone="12-34"),
        reception("rec-3"),
        b"not json",
        reception("rec-4", ends_at=(T0 - timedelta(days=1)).isoformat()),
        reception("rec-5"),
    )

    # Then the good ones are synced and each bad one is in workmesh.dead with its reason
    await eventually(lambda: synced(fake, ["rec-1", "rec-5"]), message="good records synced")
    letters: list[tuple[bytes, str]] = []

    async def four_dead() -> bool:
        letters.extend(await dead_letters(harness.amqp_url))
        return len(letters) >= 4

    await eventually(four_dead, message="four dead letters")
    reasons = sorted(reason for _, reason in letters)
    assert any("phone" in r and "10 to 15 digits" in r for r in reasons), reasons
    assert any("ends_at is before starts_at" in r for r in reasons), reasons
    assert any(r.startswith("invalid message") and body == b"not json" for body, r in letters)
    assert any(
        "bitrix24 refused crm.contact.add: ERROR_CORE" in r and "+79000000003" in r for r in reasons
    ), reasons
    assert fake.deal_by_ident("rec-3") == []


async def test_an_older_record_never_overwrites_a_newer_one(
    harness: Harness, fake: FakeBitrix24
) -> None:
    await harness.start("bitrix24", capabilities=[Bitrix24Capability(fast_settings(fake))])
    newer = (T0 + timedelta(hours=1)).isoformat()
    await publish(harness.amqp_url, reception("rec-1", status="completed", updated_at=newer))
    await eventually(lambda: synced(fake, ["rec-1"]), message="newer synced")

    await publish(harness.amqp_url, reception("rec-1", status="cancelled", comment="old"))
    await eventually(lambda: capability_outcomes(harness, "stale") == 1, message="stale seen")
    deal = fake.deal_by_ident("rec-1")[0]
    assert deal["STAGE_ID"] == "WON"
    assert fake.comments_on(deal["ID"]) == ["first visit of rec-1"]


async def test_a_deal_deleted_in_bitrix24_is_made_again(
    harness: Harness, fake: FakeBitrix24
) -> None:
    # Given a synced record whose deal a manager then deleted in Bitrix24
    await harness.start("bitrix24", capabilities=[Bitrix24Capability(fast_settings(fake))])
    await publish(harness.amqp_url, reception("rec-1"))
    await eventually(lambda: synced(fake, ["rec-1"]), message="first sync")
    fake.delete_deal(int(fake.deal_by_ident("rec-1")[0]["ID"]))

    # When the record changes
    later = (T0 + timedelta(minutes=1)).isoformat()
    await publish(harness.amqp_url, reception("rec-1", status="confirmed", updated_at=later))

    # Then the cached deal is forgotten, and the retry looks it up and creates it anew
    await eventually(lambda: synced(fake, ["rec-1"]), message="deal made again")
    assert fake.deal_by_ident("rec-1")[0]["STAGE_ID"] == "PREPARATION"
    assert len(fake.contacts) == 1


async def test_without_a_portal_events_wait_in_the_queue(harness: Harness) -> None:
    # Given the capability with no webhook configured
    await harness.start("bitrix24", capabilities=[Bitrix24Capability(Bitrix24Settings())])

    # When a reception arrives, it is kept in the durable queue for a configured process
    await publish(harness.amqp_url, reception("rec-1"))
    connection = await aio_pika.connect(harness.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(RECEPTIONS_QUEUE, passive=True)
        assert queue.declaration_result.message_count == 1


async def test_a_stop_in_the_middle_loses_and_duplicates_nothing(
    harness: Harness, fake: FakeBitrix24
) -> None:
    # Given a slow portal and a process syncing many records
    fake.limits.latency = 0.05
    fake.limits.bucket_capacity, fake.limits.bucket_drain = 4, 10.0
    settings = fast_settings(fake, batch_size=10, prefetch=20)
    first = await harness.start("bitrix24", capabilities=[Bitrix24Capability(settings)])
    idents = [f"rec-{n}" for n in range(1, 201)]
    await publish(harness.amqp_url, *[reception(i) for i in idents])
    await eventually(lambda: len(fake.deals) >= 20, message="some records synced")

    # When it stops gracefully half-way (finishing what it has taken, handing back what
    # arrives meanwhile) and another process takes over
    await first.stop()
    harness.meshes.remove(first)
    assert len(fake.deals) < len(idents)
    await harness.start("bitrix24", capabilities=[Bitrix24Capability(fast_settings(fake))])

    # Then every record ends synced once
    await eventually(lambda: synced(fake, idents), timeout=60, message="all synced")
    assert_no_duplicates(fake)
    assert len(fake.contacts) == len(idents)


async def test_records_wait_out_a_portal_that_is_down(harness: Harness, fake: FakeBitrix24) -> None:
    # Given a portal that is down
    await harness.start("bitrix24", capabilities=[Bitrix24Capability(fast_settings(fake))])
    await fake.stop()

    # When records arrive, the client's retries fail and the records go to the delay queue
    await publish(harness.amqp_url, reception("rec-1"), reception("rec-2"))
    await eventually(lambda: capability_outcomes(harness, "retry") >= 2, message="retry later")

    # Then once the portal is back they are synced, each once
    await fake.start()
    await eventually(lambda: synced(fake, ["rec-1", "rec-2"]), message="synced after outage")
    assert_no_duplicates(fake)
    assert fake.violations == []
