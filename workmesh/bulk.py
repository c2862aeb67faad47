"""One statement run for many rows, without SQLAlchemy's per-row parameter work.

SQLAlchemy's executemany builds and type-processes every row's parameters in Python: about
5 µs a row here, more than SQLite takes for the keyed UPDATE itself. The stock pusher records
thousands of answers a second on the event loop that also sends the next requests, so a
``BulkStatement`` compiles once per dialect, processes the values every row shares once, and
hands the driver plain tuples. Per-row values still go through their type's bind processor
when it has one; the result is what ``session.execute(statement, rows)`` would store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import UpdateBase

Processor = Callable[[Any], Any]


@dataclass(frozen=True)
class _Compiled:
    sql: str
    positional: bool
    names: tuple[str, ...]  # bind names in the order the driver takes them
    fixed: dict[str, Any]  # binds with a value of their own (literals), processed
    processors: dict[str, Processor]  # bind processors of the binds rows and shares fill


class BulkStatement:
    """An INSERT/UPDATE/DELETE whose ``bindparam``s the rows (and the shared values) fill."""

    def __init__(self, statement: UpdateBase) -> None:
        self.statement = statement
        self._compiled: dict[str, _Compiled] = {}

    async def execute(
        self,
        session: AsyncSession,
        rows: Sequence[Mapping[str, Any]],
        shared: Mapping[str, Any] | None = None,
    ) -> None:
        """Run the statement once per row, in the session's transaction. ``shared`` holds the
        values that are the same for every row (processed once)."""
        if not rows:
            return
        connection = await session.connection()
        compiled = self._compile(connection.dialect)
        values = {
            name: compiled.processors[name](value) if name in compiled.processors else value
            for name, value in (shared or {}).items()
        }
        values.update(compiled.fixed)
        # What each parameter slot takes: a value every row shares, or the row's own
        # (through its type's processor, if it has one).
        slots = [(name, name in values, compiled.processors.get(name)) for name in compiled.names]
        params: list[Any] = []
        try:
            for row in rows:
                own = [
                    values[name] if shared_ else (p(row[name]) if p is not None else row[name])
                    for name, shared_, p in slots
                ]
                params.append(
                    tuple(own)
                    if compiled.positional
                    else dict(zip(compiled.names, own, strict=True))
                )
        except KeyError as missing:
            raise ValueError(f"a row has no value for {missing}") from None
        await connection.exec_driver_sql(compiled.sql, params)

    def _compile(self, dialect: Dialect) -> _Compiled:
        done = self._compiled.get(dialect.name)
        if done is not None:
            return done
        compiled = self.statement.compile(dialect=dialect)
        if compiled.literal_execute_params or compiled.post_compile_params:
            raise ValueError("a bulk statement cannot expand parameters (IN lists)")
        if compiled.escaped_bind_names:
            raise ValueError("a bulk statement needs bind names the driver takes as they are")
        positional = bool(compiled.positional)
        names = tuple(compiled.positiontup or ()) if positional else tuple(compiled.binds)
        processors: dict[str, Processor] = {}
        fixed: dict[str, Any] = {}
        for name in dict.fromkeys(names):
            bind = compiled.binds[name]
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if not bind.required:  # a value written into the statement (a literal)
                value = bind.effective_value
                fixed[name] = processor(value) if processor is not None else value
            elif processor is not None:
                processors[name] = processor
        done = _Compiled(compiled.string, positional, names, fixed, processors)
        self._compiled[dialect.name] = done
        return done
