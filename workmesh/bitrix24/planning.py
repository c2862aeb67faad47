"""Pure decisions of the sync: which record of a batch wins, what a deal should hold, what
each Bitrix24 command looks like, and what an error means. No I/O here."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clients.bitrix24 import Command, CommandOutcome
from clients.bitrix24.errors import TRANSIENT_CODES
from schemas.receptions import Reception


@dataclass(frozen=True)
class DealSettings:
    ident_field: str
    stages: Mapping[str, str]


def latest_per_ident(receptions: Sequence[Reception]) -> dict[str, int]:
    """ident_id → index of the record that wins: the newest ``updated_at``, and of equals the
    one that came last. The others in the batch are superseded by it."""
    winners: dict[str, int] = {}
    for index, reception in enumerate(receptions):
        best = winners.get(reception.ident_id)
        if best is None or reception.updated_at >= receptions[best].updated_at:
            winners[reception.ident_id] = index
    return winners


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def deal_fields(reception: Reception, contact_id: int, settings: DealSettings) -> dict[str, Any]:
    return {
        "TITLE": f"Reception {reception.ident_id}: {reception.patient_name}",
        "CONTACT_ID": contact_id,
        settings.ident_field: reception.ident_id,
        "STAGE_ID": settings.stages.get(reception.status.value, "NEW"),
        "BEGINDATE": reception.starts_at.isoformat(),
        "CLOSEDATE": (reception.ends_at or reception.starts_at).isoformat(),
    }


def fields_hash(fields: Mapping[str, Any]) -> str:
    return digest(json.dumps(fields, sort_keys=True, default=str))


# --- commands -------------------------------------------------------------------------------

# Keep Bitrix24 from posting a feed event per write: we write in bulk.
_QUIET = {"REGISTER_SONET_EVENT": "N"}


def find_contact(phone: str) -> Command:
    # PHONE is a multiple field: Bitrix24 filters it by exact match only, hence one normal form.
    return Command(
        "crm.contact.list",
        {"filter": {"PHONE": phone}, "select": ["ID"], "order": {"ID": "ASC"}},
    )


def find_deals(ident_ids: Sequence[str], ident_field: str, start: int = 0) -> Command:
    # "@FIELD" is the IN filter of crm list methods: one command finds a page of 50 deals.
    params: dict[str, Any] = {
        "filter": {f"@{ident_field}": list(ident_ids)},
        "select": ["ID", "CONTACT_ID", ident_field],
        "order": {"ID": "ASC"},
    }
    if start:
        params["start"] = start
    return Command("crm.deal.list", params)


def add_contact(reception: Reception) -> Command:
    fields = {
        "NAME": reception.patient_name,
        "PHONE": [{"VALUE": reception.phone, "VALUE_TYPE": "MOBILE"}],
    }
    return Command("crm.contact.add", {"fields": fields, "params": _QUIET})


def add_deal(fields: Mapping[str, Any]) -> Command:
    return Command("crm.deal.add", {"fields": dict(fields), "params": _QUIET})


def update_deal(deal_id: int, fields: Mapping[str, Any]) -> Command:
    return Command("crm.deal.update", {"id": deal_id, "fields": dict(fields), "params": _QUIET})


def add_comment(deal_id: int, text: str) -> Command:
    fields = {"ENTITY_ID": deal_id, "ENTITY_TYPE": "deal", "COMMENT": text}
    return Command("crm.timeline.comment.add", {"fields": fields})


def recent_comments(deal_id: int) -> Command:
    return Command(
        "crm.timeline.comment.list",
        {
            "filter": {"ENTITY_ID": deal_id, "ENTITY_TYPE": "deal"},
            "select": ["ID", "COMMENT"],
            "order": {"ID": "DESC"},
        },
    )


# --- reading outcomes -----------------------------------------------------------------------


def first_id(outcome: CommandOutcome) -> int | None:
    """The oldest match of a list command (the one a human would have kept)."""
    rows = outcome.result if isinstance(outcome.result, list) else []
    ids = [int(row["ID"]) for row in rows if isinstance(row, Mapping) and "ID" in row]
    return min(ids) if ids else None


def deals_by_ident(outcome: CommandOutcome, ident_field: str) -> dict[str, tuple[int, int]]:
    """ident_id → (deal id, contact id), the oldest deal of each ident."""
    found: dict[str, tuple[int, int]] = {}
    rows = outcome.result if isinstance(outcome.result, list) else []
    for row in rows:
        if not isinstance(row, Mapping) or not row.get(ident_field):
            continue
        ident, deal_id = str(row[ident_field]), int(row["ID"])
        contact_id = int(row.get("CONTACT_ID") or 0)
        if ident not in found or deal_id < found[ident][0]:
            found[ident] = (deal_id, contact_id)
    return found


def new_id(outcome: CommandOutcome) -> int | None:
    try:
        return int(outcome.result)
    except (TypeError, ValueError):
        return None


def has_comment(outcome: CommandOutcome, text: str) -> bool:
    rows = outcome.result if isinstance(outcome.result, list) else []
    return any(isinstance(row, Mapping) and row.get("COMMENT") == text for row in rows)


def is_transient(outcome: CommandOutcome) -> bool:
    return outcome.error in TRANSIENT_CODES


def is_not_found(outcome: CommandOutcome) -> bool:
    return outcome.error == "NOT_FOUND" or "not found" in outcome.description.lower()


def refusal(command: Command, outcome: CommandOutcome) -> str:
    detail = f"{outcome.error}: {outcome.description}" if outcome.description else outcome.error
    return f"bitrix24 refused {command.method}: {detail}"
