"""``workmesh files load-violations FILE``: the violation-type reference list into the database."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from workmesh.settings import Settings


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    files = commands.add_parser("files", help="file intake: reference data")
    actions = files.add_subparsers(required=True, metavar="ACTION")
    load = actions.add_parser(
        "load-violations",
        help="load violation types from a CSV or XLSX file (upsert by code)",
        description="Read violation types from FILE (.csv or .xlsx; a header row naming "
        "'code' and 'name', optionally 'description') and add or update them by code. Types "
        "not in the file are kept. Safe to run at every start.",
    )
    load.add_argument("file", type=Path, help="e.g. media/classification_events.xlsx")
    load.set_defaults(func=load_violations)


def load_violations(settings: Settings, args: argparse.Namespace) -> int:
    from workmesh.db import create_engine, session_factory
    from workmesh.files.violations import BadSheet, read_rows, upsert

    try:
        rows = read_rows(args.file)
    except (BadSheet, OSError) as error:
        print(f"workmesh: {error}", file=sys.stderr)
        return 1

    async def load() -> tuple[int, int]:
        engine = create_engine(settings.database)
        try:
            async with session_factory(engine)() as session, session.begin():
                return await upsert(session, rows)
        finally:
            await engine.dispose()

    added, updated = asyncio.run(load())
    print(
        f"violation types: {len(rows)} in the file, {added} added, {updated} updated",
        file=sys.stderr,
    )
    return 0
