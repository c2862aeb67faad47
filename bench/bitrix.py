"""Bitrix24 sync benchmark: records/hour against the fake portal with standard-plan limits
and 0.5 s per request — workmesh's batch sync and the seed's algorithm side by side in one run.

Run from the repository root::

    .venv/bin/python bench/bitrix.py           # ~2 min: 90 s measured (7.5 simulated min)
    .venv/bin/python bench/bitrix.py --quick   # ~40 s: 30 s measured (2.5 simulated min)

Time is scaled: with ``--scale K`` every duration of the portal (latency, bucket drain,
operating-time window) and of our client (flush timeout, retry waits) is divided by K, so one
real second is K simulated seconds; records/hour = records / (real seconds * K) * 3600. Our own
CPU time is not scaled, so the scaled figure is, if anything, low. See docs/bitrix24.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aio_pika
import aiohttp

from bench._common import add_vhost, delete_vhost, free_port
from clients.bitrix24 import (
    Bitrix24Client,
    Command,
    Endpoint,
    LeakyBucket,
    OperatingBudget,
    RetryPolicy,
)
from handlers.bitrix24 import RECEPTION_KEY
from models.bitrix24 import Bitrix24Contact, Bitrix24Deal
from rabbitmq.topology import EVENTS_EXCHANGE
from schemas.receptions import Reception, ReceptionStatus
from tests.bitrix24.fake import FakeBitrix24, FakeLimits
from workmesh.bitrix24 import Bitrix24Capability, Bitrix24Settings, planning
from workmesh.db import migrate
from workmesh.runtime import Mesh
from workmesh.settings import (
    AmqpSettings,
    DatabaseSettings,
    DispatchSettings,
    HttpSettings,
    SecuritySettings,
    Settings,
)

# Bitrix24 standard plans: a bucket of 50 requests draining 2 per second; 480 s of operating
# time per method per 10 minutes.
STANDARD = FakeLimits(
    bucket_capacity=50, bucket_drain=2.0, operating_limit=480, operating_window=600
)
SEED_REPORTED = 6_000  # records/hour, the seed's own figure
TARGET = 100_000
TARGET_SHARE = 0.85
T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
DEALS = planning.DealSettings("UF_CRM_IDENT_ID", Bitrix24Settings().stages)


def commands_per_record(new_share: float) -> float:
    """The fewest commands the mix needs, whoever sends them.

    A new record: find its contact by phone (one command per phone: the filter matches
    exactly), find its deal (an IN filter: 1/50 of a command), add the contact, add the deal,
    add the comment. A changed record of a known deal: update the deal, add the comment.
    """
    return new_share * (1 + 1 / 50 + 3) + (1 - new_share) * 2


# --- the workload ------------------------------------------------------------------------


def old_record(n: int) -> Reception:
    return Reception(
        ident_id=f"old-{n}",
        phone=f"+7960{n:07d}",
        patient_name=f"Old patient {n}",
        starts_at=T0,
        comment=f"booked by phone ({n})",
        updated_at=T0,
    )


def workload(new_share: float) -> Iterator[Reception]:
    """New and changed records interleaved evenly, ``new_share`` of them new."""
    share, new, old = 0.0, 0, 0
    while True:
        share += new_share
        if share >= 1:
            share -= 1
            new += 1
            yield Reception(
                ident_id=f"new-{new}",
                phone=f"+7950{new:07d}",
                patient_name=f"New patient {new}",
                starts_at=T0 + timedelta(days=1),
                comment=f"first visit ({new})",
                updated_at=T0 + timedelta(hours=1),
            )
        else:
            old += 1
            yield replace_record(old_record(old))


def replace_record(record: Reception) -> Reception:
    return record.model_copy(
        update={
            "status": ReceptionStatus.CONFIRMED,
            "comment": f"{record.comment}; confirmed by SMS",
            "updated_at": record.updated_at + timedelta(hours=1),
        }
    )


def seed_portal(fake: FakeBitrix24, count: int) -> dict[str, tuple[int, int]]:
    """The old records as an earlier sync left them: ident → (deal id, contact id)."""
    ids = {}
    for n in range(1, count + 1):
        record = old_record(n)
        contact_id = fake.seed("crm.contact.add", planning.add_contact(record).params)
        fields = planning.deal_fields(record, contact_id, DEALS)
        deal_id = fake.seed("crm.deal.add", {"fields": fields})
        fake.seed(
            "crm.timeline.comment.add", planning.add_comment(deal_id, record.comment or "").params
        )
        ids[record.ident_id] = (deal_id, contact_id)
    fake.reset_counters()
    return ids


# --- workmesh ----------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    done: list[tuple[float, int]] = field(default_factory=list)  # (real time, records done)
    fake: FakeBitrix24 | None = None
    notes: list[str] = field(default_factory=list)

    def rate_per_hour(self, scale: float, since: float = 0.0) -> float:
        points = [(t, n) for t, n in self.done if t >= since]
        if len(points) < 2 or points[-1][0] <= points[0][0]:
            return 0.0
        (t0, n0), (t1, n1) = points[0], points[-1]
        return (n1 - n0) / ((t1 - t0) * scale) * 3600


async def seed_cache(mesh: Mesh, ids: dict[str, tuple[int, int]]) -> None:
    async with mesh.sessions() as session, session.begin():
        for ident, (deal_id, contact_id) in ids.items():
            record = old_record(int(ident.split("-")[1]))
            fields = planning.deal_fields(record, contact_id, DEALS)
            session.add(Bitrix24Contact(phone=record.phone, contact_id=contact_id))
            session.add(
                Bitrix24Deal(
                    ident_id=ident,
                    deal_id=deal_id,
                    contact_id=contact_id,
                    fields_hash=planning.fields_hash(fields),
                    comment_hash=planning.digest(record.comment or ""),
                    source_updated_at=record.updated_at,
                )
            )


def mesh_settings(url: str, database: str) -> Settings:
    return Settings(
        amqp=AmqpSettings(url=url),
        database=DatabaseSettings(url=database),
        http=HttpSettings(host="127.0.0.1", port=free_port()),
        dispatch=DispatchSettings(),
        security=SecuritySettings(admin_token=uuid.uuid4().hex),
    )


def sync_settings(fake: FakeBitrix24, scale: float) -> Bitrix24Settings:
    return Bitrix24Settings(
        webhook_url=fake.webhook_url,
        bucket_capacity=STANDARD.bucket_capacity,
        bucket_drain=STANDARD.bucket_drain * scale,
        operating_limit=STANDARD.operating_limit / scale,
        operating_pause=60 / scale,
        retry_waits=[1 / scale, 2 / scale, 4 / scale],
        retry_delay=30 / scale,
        flush_timeout=0.5 / scale,
    )


def done_in(mesh: Mesh) -> int:
    registry = mesh.metrics.registry
    total = 0.0
    for outcome in ("synced", "unchanged"):
        value = registry.get_sample_value("workmesh_bitrix24_records_total", {"outcome": outcome})
        total += value or 0.0
    return int(total)


async def run_workmesh(
    fake: FakeBitrix24, url: str, workdir: Path, args: argparse.Namespace, stop: asyncio.Event
) -> Run:
    run = Run("workmesh batch sync", fake=fake)
    database = f"sqlite+aiosqlite:///{workdir / 'bitrix.db'}"
    await asyncio.to_thread(migrate, database)
    mesh = Mesh(
        mesh_settings(url, database),
        "bitrix24",
        [Bitrix24Capability(sync_settings(fake, args.scale))],
    )
    await seed_cache(mesh, args.seeded_ids)
    await mesh.start()
    records = workload(args.new_share)
    published = 0
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EVENTS_EXCHANGE)
        started = time.monotonic()
        run.done.append((0.0, 0))
        while not stop.is_set():
            done = done_in(mesh)
            run.done.append((time.monotonic() - started, done))
            if published - done < args.backlog:
                # Keep a backlog: the sync must never wait for records.
                await asyncio.gather(
                    *(
                        exchange.publish(
                            aio_pika.Message(
                                next(records).model_dump_json().encode(),
                                content_type="application/json",
                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            ),
                            routing_key=RECEPTION_KEY,
                        )
                        for _ in range(args.backlog // 2)
                    )
                )
                published += args.backlog // 2
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)
        run.done.append((time.monotonic() - started, done_in(mesh)))
    finally:
        await connection.close()
        await mesh.stop()
    return run


# --- the seed's algorithm ----------------------------------------------------------------


async def run_seed(fake: FakeBitrix24, args: argparse.Namespace, stop: asyncio.Event) -> Run:
    """The seed's sync: batches of 20, one batch of contact look-ups and one of deal look-ups,
    then one request per create, update and comment, one after another; comment hashes kept
    (the seed's comment_hashes.json), nothing else cached. Same client, same limits kept."""
    run = Run("seed's algorithm", fake=fake)
    hashes = {
        deal_id: hashlib.md5((old_record(int(i.split("-")[1])).comment or "").encode()).hexdigest()
        for i, (deal_id, _) in args.seeded_ids.items()
    }
    records = workload(args.new_share)
    async with aiohttp.ClientSession() as http:
        client = Bitrix24Client(
            http,
            Endpoint(fake.webhook_url),
            bucket=LeakyBucket(STANDARD.bucket_capacity - 2, STANDARD.bucket_drain * args.scale),
            budget=OperatingBudget(STANDARD.operating_limit / args.scale),
            retry=RetryPolicy(tuple(w / args.scale for w in (1, 2, 4))),
        )
        started = time.monotonic()
        done = 0
        run.done.append((0.0, 0))
        while not stop.is_set():
            batch = [next(records) for _ in range(20)]
            contacts = await client.batch([planning.find_contact(r.phone) for r in batch])
            deals = await client.batch(
                [
                    Command(
                        "crm.deal.list",
                        {"filter": {DEALS.ident_field: r.ident_id}, "select": ["ID"]},
                    )
                    for r in batch
                ]
            )
            for record, contact, deal in zip(batch, contacts, deals, strict=True):
                contact_id = planning.first_id(contact)
                if contact_id is None:
                    answer = await client.call(
                        "crm.contact.add", planning.add_contact(record).params
                    )
                    contact_id = int(answer["result"])
                fields = planning.deal_fields(record, contact_id, DEALS)
                deal_id = planning.first_id(deal)
                if deal_id is None:
                    deal_id = int(
                        (await client.call("crm.deal.add", planning.add_deal(fields).params))[
                            "result"
                        ]
                    )
                else:
                    await client.call(
                        "crm.deal.update", planning.update_deal(deal_id, fields).params
                    )
                comment = record.comment or ""
                digest = hashlib.md5(comment.encode()).hexdigest()
                if comment and hashes.get(deal_id) != digest:
                    await client.call(
                        "crm.timeline.comment.add", planning.add_comment(deal_id, comment).params
                    )
                    hashes[deal_id] = digest
                done += 1
                run.done.append((time.monotonic() - started, done))
                if stop.is_set():
                    break
        run.done.append((time.monotonic() - started, done))
    return run


# --- the run -----------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> int:
    scale = args.scale
    limits = FakeLimits(
        bucket_capacity=STANDARD.bucket_capacity,
        bucket_drain=STANDARD.bucket_drain * scale,
        operating_limit=STANDARD.operating_limit / scale,
        operating_window=STANDARD.operating_window / scale,
        latency=args.latency / scale,
    )
    per_record = commands_per_record(args.new_share)
    limit_per_hour = STANDARD.bucket_drain * 3600 * 50 / per_record
    # Enough known deals for every changed record the run could possibly see.
    expected = limit_per_hour / 3600 * scale * args.seconds
    old_needed = int(expected * (1 - args.new_share) * 1.3) + 1000
    ours_fake = FakeBitrix24(limits=replace(limits))
    seed_fake = FakeBitrix24(limits=replace(limits))
    started = time.monotonic()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {text}", file=sys.stderr, flush=True)

    log(f"seeding {old_needed} known receptions into both portals")
    args.seeded_ids = seed_portal(ours_fake, old_needed)
    assert seed_portal(seed_fake, old_needed) == args.seeded_ids
    await ours_fake.start()
    await seed_fake.start()
    vhost = f"bench-bitrix-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    url = f"amqp://guest:guest@{args.host}/{vhost}"
    workdir = Path(tempfile.mkdtemp(prefix="workmesh-bench-bitrix-"))
    add_vhost(vhost)
    stop = asyncio.Event()
    try:
        log(
            f"running both for {args.seconds:.0f} s ({args.seconds * scale / 60:.1f} simulated min)"
        )
        ours_task = asyncio.create_task(run_workmesh(ours_fake, url, workdir, args, stop))
        seed_task = asyncio.create_task(run_seed(seed_fake, args, stop))
        await asyncio.wait({ours_task, seed_task}, timeout=args.seconds)
        stop.set()
        ours, seed = await asyncio.gather(ours_task, seed_task)
    finally:
        stop.set()
        await ours_fake.stop()
        await seed_fake.stop()
        try:
            delete_vhost(vhost)
        except Exception as error:
            log(f"could not delete vhost {vhost}: {error!r}")
        shutil.rmtree(workdir, ignore_errors=True)
    report(args, ours, seed, per_record, limit_per_hour, time.monotonic() - started)
    return 0


def report(
    args: argparse.Namespace,
    ours: Run,
    seed: Run,
    per_record: float,
    limit_per_hour: float,
    elapsed: float,
) -> None:
    scale = args.scale
    half = args.seconds / 2
    print()
    print(
        f"Bitrix24 sync: standard plan (bucket 50, drain 2/s, operating 480 s per 10 min), "
        f"{args.latency:.1f} s per request, {args.new_share:.0%} new / "
        f"{1 - args.new_share:.0%} changed records; time scaled x{scale:g}, "
        f"{args.seconds:.0f} s measured = {args.seconds * scale / 60:.1f} simulated min"
    )
    print(
        f"limit of the portal for this mix: {per_record:.2f} commands per record at best -> "
        f"{limit_per_hour:,.0f} records/hour (2 requests/s x 50 commands; the first "
        f"burst of 50 requests adds a one-off {50 * 50 / per_record:,.0f} records)"
    )
    print()
    header = f"{'':<22}{'records/h':>12}{'steady/h':>12}{'records':>10}{'requests':>10}"
    header += f"{'cmds':>9}{'cmds/rec':>10}{'fill':>7}{'refused':>9}"
    print(header)
    for run in (ours, seed):
        fake = run.fake
        assert fake is not None
        records = run.done[-1][1]
        requests = sum(fake.requests.values())
        commands = sum(fake.commands.values())
        fill = sum(fake.batch_sizes) / len(fake.batch_sizes) if fake.batch_sizes else 0
        print(
            f"{run.name:<22}{run.rate_per_hour(scale):>12,.0f}"
            f"{run.rate_per_hour(scale, since=half):>12,.0f}{records:>10,}{requests:>10,}"
            f"{commands:>9,}{commands / max(records, 1):>10.2f}{fill:>7.1f}"
            f"{len(fake.violations):>9}"
        )
    steady = ours.rate_per_hour(scale, since=half)
    print()
    print(f"seed's own report: ~{SEED_REPORTED:,} records/hour (~1,200 before its batching)")
    print(
        f"target: >= {TARGET:,} records/hour and >= {TARGET_SHARE:.0%} of the limit; workmesh "
        f"steady: {steady:,.0f}/h = {steady / limit_per_hour:.0%} of the limit, "
        f"{steady / max(seed.rate_per_hour(scale, since=half), 1):.0f}x the seed's algorithm"
    )
    print(
        "records/h: over the whole run (includes the opening burst); steady/h: second half "
        "only. refused: 503/429 answers the portal had to give."
    )
    print(f"(run took {elapsed:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short run (30 s measured)")
    parser.add_argument("--seconds", type=float, default=None, help="real seconds measured")
    parser.add_argument("--scale", type=float, default=5.0, help="simulated seconds per second")
    parser.add_argument("--latency", type=float, default=0.5, help="seconds per request")
    parser.add_argument("--new-share", type=float, default=0.5, help="share of new records")
    parser.add_argument("--backlog", type=int, default=3000, help="records kept queued")
    parser.add_argument("--host", default="127.0.0.1:5672", help="RabbitMQ host:port")
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = 30.0 if args.quick else 90.0
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
