"""One sync batch of up to 50 records, in phases that each cost as few requests as they can:

1. the local cache (one query for contacts, one for deals);
2. look-ups of what the cache lacks: a ``crm.contact.list`` per unknown phone (the phone
   filter matches exactly, one phone per command) and a ``crm.deal.list`` per 50 unknown
   ident_ids (an IN filter);
3. ``crm.contact.add`` for phones still unknown;
4. ``crm.deal.add`` / ``crm.deal.update`` where the deal is new or its fields changed;
5. commit the ids, and mark the comments about to be sent as pending;
6. ``crm.timeline.comment.add`` for new or changed comments (after a crash, a pending one is
   first looked for on the timeline);
7. commit the sync: fields and comment hashes, in one transaction.

Every phase's commands go to the shared ``CommandPacker``, which packs them with other
batches' commands into full requests. A record that fails a phase leaves the batch with an
outcome (retry later, or dead with Bitrix24's reason); the others go on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clients.bitrix24 import PAGE_SIZE, Command, CommandOutcome, CommandPacker
from schemas.receptions import Reception
from workmesh.bitrix24 import planning
from workmesh.bitrix24.metrics import SyncMetrics
from workmesh.bitrix24.planning import DealSettings
from workmesh.bitrix24.store import (
    DealState,
    forget_deals,
    load_contacts,
    load_deals,
    save_contacts,
    save_deals,
)

log = logging.getLogger(__name__)


class Result(StrEnum):
    SYNCED = "synced"  # something was written to Bitrix24
    UNCHANGED = "unchanged"  # Bitrix24 already held it: nothing written
    STALE = "stale"  # older than what was synced already
    SUPERSEDED = "superseded"  # a newer record of the same ident_id was in the batch
    RETRY = "retry"  # not now: try again later
    DEAD = "dead"  # Bitrix24 refuses it: dead-letter it


@dataclass(frozen=True)
class Outcome:
    result: Result
    reason: str = ""


@dataclass
class _Work:
    """One record's way through the phases."""

    reception: Reception
    deal: DealState | None = None
    cached_deal: bool = False
    contact_id: int | None = None
    outcome: Outcome | None = None
    wrote: bool = False
    fields: dict[str, object] = field(default_factory=dict)
    comment_hash: str | None = None  # set when this sync owes the timeline a comment

    @property
    def live(self) -> bool:
        return self.outcome is None

    def fail(self, outcome: Outcome) -> None:
        if self.outcome is None:
            self.outcome = outcome


class BatchSync:
    def __init__(
        self,
        packer: CommandPacker,
        sessions: async_sessionmaker[AsyncSession],
        deal_settings: DealSettings,
        metrics: SyncMetrics,
    ) -> None:
        self.packer = packer
        self.sessions = sessions
        self.deals = deal_settings
        self.metrics = metrics

    async def run(self, receptions: Sequence[Reception]) -> list[Outcome]:
        """Outcomes in the order of ``receptions``; raises when nothing could be decided."""
        with self.metrics.phase("process_batch"):
            winners = planning.latest_per_ident(receptions)
            works = {ident: _Work(receptions[index]) for ident, index in winners.items()}
            await self._load_cache(works)
            await self._look_up([w for w in works.values() if w.live])
            await self._create_contacts([w for w in works.values() if w.live])
            await self._write_deals([w for w in works.values() if w.live])
            owed = await self._mark_pending(list(works.values()))
            await self._add_comments(owed)
            await self._record_sync([w for w in works.values() if w.live])
        outcomes: list[Outcome] = []
        for index, reception in enumerate(receptions):
            decided = works[reception.ident_id].outcome
            assert decided is not None
            if winners[reception.ident_id] != index and decided.result is not Result.RETRY:
                # Done with the winner; but if the winner must retry, so must this one.
                decided = Outcome(Result.SUPERSEDED)
            outcomes.append(decided)
        return outcomes

    async def _load_cache(self, works: dict[str, _Work]) -> None:
        async with self.sessions() as session:
            contacts = await load_contacts(session, (w.reception.phone for w in works.values()))
            deals = await load_deals(session, works)
        for ident, work in works.items():
            deal = deals.get(ident)
            stored = deal.source_updated_at if deal else None
            if stored is not None and work.reception.updated_at < stored:
                work.fail(Outcome(Result.STALE))
                continue
            work.deal, work.cached_deal = deal, deal is not None
            work.contact_id = contacts.get(work.reception.phone)

    async def _look_up(self, works: list[_Work]) -> None:
        phones = sorted({w.reception.phone for w in works if w.contact_id is None})
        idents = sorted(w.reception.ident_id for w in works if w.deal is None)
        with self.metrics.phase("batch_find_contacts"):
            found_contacts = await self._run_commands([planning.find_contact(p) for p in phones])
        for phone, (command, outcome) in zip(phones, found_contacts, strict=True):
            if not outcome.ok:
                self._fail_where(works, command, outcome, phone=phone)
                continue
            contact_id = planning.first_id(outcome)
            for work in works:
                if work.reception.phone == phone and contact_id is not None:
                    work.contact_id = contact_id
        with self.metrics.phase("batch_find_deals"):
            found_deals = await self._find_deals(works, idents)
        for work in works:
            hit = found_deals.get(work.reception.ident_id)
            if work.live and work.deal is None and hit is not None:
                work.deal = DealState(work.reception.ident_id, deal_id=hit[0], contact_id=hit[1])

    async def _find_deals(
        self, works: list[_Work], idents: list[str]
    ) -> dict[str, tuple[int, int]]:
        found: dict[str, tuple[int, int]] = {}
        chunks = [idents[i : i + PAGE_SIZE] for i in range(0, len(idents), PAGE_SIZE)]
        pending = [(chunk, 0) for chunk in chunks]
        while pending:
            commands = [planning.find_deals(c, self.deals.ident_field, s) for c, s in pending]
            answers = await self._run_commands(commands)
            following = []
            for (chunk, _), (command, outcome) in zip(pending, answers, strict=True):
                if not outcome.ok:
                    for ident in chunk:
                        self._fail_where(works, command, outcome, ident=ident)
                    continue
                for ident, hit in planning.deals_by_ident(outcome, self.deals.ident_field).items():
                    if ident not in found or hit[0] < found[ident][0]:
                        found[ident] = hit
                if outcome.next:  # duplicates in Bitrix24 made more than a page
                    following.append((chunk, outcome.next))
            pending = following
        return found

    async def _create_contacts(self, works: list[_Work]) -> None:
        first_by_phone: dict[str, Reception] = {}
        for work in works:
            if work.contact_id is None:
                first_by_phone.setdefault(work.reception.phone, work.reception)
        phones = sorted(first_by_phone)
        answers = await self._run_commands(
            [planning.add_contact(first_by_phone[p]) for p in phones]
        )
        for phone, (command, outcome) in zip(phones, answers, strict=True):
            contact_id = planning.new_id(outcome) if outcome.ok else None
            if contact_id is None:
                self._fail_where(works, command, outcome, phone=phone)
                continue
            for work in works:
                if work.reception.phone == phone:
                    work.contact_id, work.wrote = contact_id, True

    async def _write_deals(self, works: list[_Work]) -> None:
        planned: list[tuple[_Work, Command]] = []
        for work in works:
            assert work.contact_id is not None
            work.fields = planning.deal_fields(work.reception, work.contact_id, self.deals)
            digest = planning.fields_hash(work.fields)
            if work.deal is None:
                planned.append((work, planning.add_deal(work.fields)))
            elif not work.cached_deal or work.deal.fields_hash != digest:
                # A deal found by look-up may hold anything: write it once to be sure.
                planned.append((work, planning.update_deal(work.deal.deal_id, work.fields)))
        answers = await self._run_commands([command for _, command in planned])
        forgotten: list[str] = []
        for (work, _), (command, outcome) in zip(planned, answers, strict=True):
            if not outcome.ok:
                if command.method == "crm.deal.update" and planning.is_not_found(outcome):
                    forgotten.append(work.reception.ident_id)
                    work.deal = None  # not saved again below: the next try looks it up
                    work.fail(Outcome(Result.RETRY, "the cached deal is gone from Bitrix24"))
                else:
                    work.fail(self._refused(command, outcome))
                continue
            if work.deal is None:
                deal_id = planning.new_id(outcome)
                if deal_id is None:
                    work.fail(Outcome(Result.RETRY, f"crm.deal.add answered {outcome.result!r}"))
                    continue
                work.deal = DealState(work.reception.ident_id, deal_id, work.contact_id or 0)
            work.wrote = True
        if forgotten:
            async with self.sessions() as session, session.begin():
                await forget_deals(session, forgotten)

    async def _mark_pending(self, works: list[_Work]) -> list[_Work]:
        """Commit the ids learnt so far and the comments about to be sent; returns those."""
        contacts = {w.reception.phone: w.contact_id for w in works if w.contact_id is not None}
        owed: list[_Work] = []
        states: list[DealState] = []
        for work in works:
            if work.deal is None or work.reception.comment is None:
                continue
            if work.live:
                digest = planning.digest(work.reception.comment)
                if digest != work.deal.comment_hash:
                    work.comment_hash = digest
                    owed.append(work)
        for work in works:
            if work.deal is None:
                continue
            deal = work.deal.but(contact_id=work.contact_id or work.deal.contact_id)
            if work.comment_hash is not None:
                deal = deal.but(pending_comment_hash=work.comment_hash)
            states.append(deal)
        async with self.sessions() as session, session.begin():
            await save_contacts(session, contacts)
            await save_deals(session, states)
        return owed

    async def _add_comments(self, owed: list[_Work]) -> None:
        # A comment marked pending by an earlier try may be on the timeline already.
        unsure = [w for w in owed if w.deal and w.deal.pending_comment_hash == w.comment_hash]
        answers = await self._run_commands(
            [planning.recent_comments(w.deal.deal_id) for w in unsure if w.deal]
        )
        present: set[str] = set()
        for work, (command, outcome) in zip(unsure, answers, strict=True):
            if not outcome.ok:
                work.fail(self._refused(command, outcome))
            elif planning.has_comment(outcome, work.reception.comment or ""):
                present.add(work.reception.ident_id)
        to_add = [w for w in owed if w.live and w.reception.ident_id not in present]
        answers = await self._run_commands(
            [
                planning.add_comment(w.deal.deal_id, w.reception.comment or "")
                for w in to_add
                if w.deal
            ]
        )
        for work, (command, outcome) in zip(to_add, answers, strict=True):
            if outcome.ok:
                work.wrote = True
            else:
                work.fail(self._refused(command, outcome))

    async def _record_sync(self, works: list[_Work]) -> None:
        """The sync's commit: after it, a redelivered record changes nothing."""
        states = []
        for work in works:
            assert work.deal is not None
            state = work.deal.but(
                contact_id=work.contact_id or work.deal.contact_id,
                fields_hash=planning.fields_hash(work.fields),
                pending_comment_hash=None,
                source_updated_at=work.reception.updated_at,
            )
            if work.comment_hash is not None:
                state = state.but(comment_hash=work.comment_hash)
            states.append(state)
        async with self.sessions() as session, session.begin():
            await save_deals(session, states)
        for work in works:
            work.outcome = Outcome(Result.SYNCED if work.wrote else Result.UNCHANGED)

    async def _run_commands(self, commands: list[Command]) -> list[tuple[Command, CommandOutcome]]:
        outcomes = await self.packer.execute(commands)
        return list(zip(commands, outcomes, strict=True))

    def _refused(self, command: Command, outcome: CommandOutcome) -> Outcome:
        reason = planning.refusal(command, outcome)
        return Outcome(Result.RETRY if planning.is_transient(outcome) else Result.DEAD, reason)

    def _fail_where(
        self,
        works: list[_Work],
        command: Command,
        outcome: CommandOutcome,
        *,
        phone: str | None = None,
        ident: str | None = None,
    ) -> None:
        failure = self._refused(command, outcome)
        for work in works:
            if work.reception.phone == phone or work.reception.ident_id == ident:
                work.fail(failure)
