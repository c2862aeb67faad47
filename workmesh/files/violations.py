"""The reference list of violation types: read from CSV or XLSX, upserted by code.

The file needs a header row naming the columns ``code`` and ``name`` (``description`` is
optional; other columns are ignored). Loading twice changes nothing; a changed name or
description is updated; types missing from the file are left alone (they may be in use).
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from models.files import ViolationType


class BadSheet(Exception):
    """The file cannot be read as a list of violation types; the text says where."""


@dataclass(frozen=True)
class Row:
    code: str
    name: str
    description: str | None


def read_rows(path: Path) -> list[Row]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, encoding="utf-8-sig", newline="") as f:
            return parse(csv.reader(f), str(path))
    if suffix in (".xlsx", ".xlsm"):
        from openpyxl import load_workbook

        try:
            workbook = load_workbook(path, read_only=True, data_only=True)
        except (zipfile.BadZipFile, KeyError, ValueError) as error:
            raise BadSheet(f"{path}: not a readable XLSX workbook ({error})") from None
        try:
            sheet = workbook.worksheets[0]
            return parse(sheet.iter_rows(values_only=True), f"{path} sheet {sheet.title!r}")
        finally:
            workbook.close()
    raise BadSheet(f"{path}: a .csv or .xlsx file is expected")


def parse_csv_text(text: str) -> list[Row]:
    return parse(csv.reader(io.StringIO(text)), "the CSV")


def parse(lines: Iterable[Iterable[object]], where: str) -> list[Row]:
    rows = iter(lines)
    header = [_text(c).lower() for c in next(rows, [])]
    if "code" not in header or "name" not in header:
        raise BadSheet(f"{where}: the first row must name the columns 'code' and 'name'")
    at = {name: header.index(name) for name in ("code", "name", "description") if name in header}
    found: dict[str, Row] = {}
    for number, cells in enumerate(_rows(rows), start=2):
        if not any(cells):
            continue
        code, name = _cell(cells, at["code"]), _cell(cells, at["name"])
        if not code or not name:
            raise BadSheet(f"{where}, row {number}: both code and name are needed")
        if len(code) > 64 or len(name) > 500:
            raise BadSheet(f"{where}, row {number}: code (64) or name (500) is too long")
        description = _cell(cells, at["description"]) if "description" in at else ""
        found[code] = Row(code, name, description or None)
    return list(found.values())


def _rows(rows: Iterator[Iterable[object]]) -> Iterator[list[str]]:
    for cells in rows:
        yield [_text(c) for c in cells]


def _cell(cells: list[str], index: int) -> str:
    return cells[index] if index < len(cells) else ""


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a code typed as 12 in a spreadsheet comes back as 12.0
    return str(value).strip()


async def upsert(session: AsyncSession, rows: list[Row]) -> tuple[int, int]:
    """Insert new codes and update changed ones; returns (added, updated)."""
    existing = {
        v.code: v
        for v in (
            await session.execute(
                select(ViolationType).where(ViolationType.code.in_([r.code for r in rows]))
            )
        ).scalars()
    }
    added = updated = 0
    for row in rows:
        known = existing.get(row.code)
        if known is None:
            session.add(ViolationType(code=row.code, name=row.name, description=row.description))
            added += 1
        elif (known.name, known.description) != (row.name, row.description):
            known.name, known.description = row.name, row.description
            updated += 1
    return added, updated
