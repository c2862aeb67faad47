"""Statements run many times on hot paths, without SQLAlchemy's per-call and per-row work.

SQLAlchemy's executemany builds and type-processes every row's parameters in Python: about
5 µs a row here, more than SQLite takes for the keyed UPDATE itself. The stock pusher records
thousands of answers a second on the event loop that also sends the next requests, so a
``BulkStatement`` compiles once per dialect, processes the values every row shares once, and
hands the driver plain tuples. Per-row values still go through their type's bind processor
when it has one; the result is what ``session.execute(statement, rows)`` would store.

The dispatcher leader reads and writes a turn's task rows the same way (``RowQuery`` for the
read, workmesh/services/task_rows.py): building the statements anew, with their cache keys,
cost a turn more than SQLite took to run them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from sqlalchemy import Select
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import ClauseElement

Processor = Callable[[Any], Any]


class DriverResult(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchall(self) -> Sequence[Any]: ...


class StatementRunner(Protocol):
    """What the ``execute_on`` methods need of a connection: a SQLAlchemy ``Connection``, or
    a driver's connection with its dialect (workmesh/engine/store.py)."""

    @property
    def dialect(self) -> Dialect: ...

    def exec_driver_sql(self, statement: str, parameters: Any, /) -> DriverResult: ...


Processors = list[Processor | None]  # one a column; None: the driver's value as it is


@dataclass(frozen=True)
class _Compiled:
    sql: str
    positional: bool
    names: tuple[str, ...]  # bind names in the order the driver takes them
    fixed: dict[str, Any]  # binds with a value of their own (literals), processed
    processors: dict[str, Processor]  # bind processors of the binds rows and shares fill

    def parameters(self, rows: Sequence[Mapping[str, Any]], shared: Mapping[str, Any]) -> list[Any]:
        """The driver's parameters for each row: tuples or dicts, as its paramstyle wants."""
        processors = self.processors
        values = {
            name: processors[name](value) if name in processors else value
            for name, value in shared.items()
        }
        values.update(self.fixed)
        # What each parameter slot takes: a value every row shares, or the row's own
        # (through its type's processor, if it has one).
        slots = [(name, name in values, processors.get(name)) for name in self.names]
        params: list[Any] = []
        try:
            for row in rows:
                own = [
                    values[name] if shared_ else (p(row[name]) if p is not None else row[name])
                    for name, shared_, p in slots
                ]
                params.append(
                    tuple(own) if self.positional else dict(zip(self.names, own, strict=True))
                )
        except KeyError as missing:
            raise ValueError(f"a row has no value for {missing}") from None
        return params


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
        sql, params = self.parameters(connection.dialect, rows, shared)
        await connection.exec_driver_sql(sql, params)

    def execute_on(
        self,
        connection: StatementRunner,
        rows: Sequence[Mapping[str, Any]],
        shared: Mapping[str, Any] | None = None,
    ) -> int:
        """The same on a synchronous connection; returns the rows the statement matched (where
        the driver counts them over an executemany, ``dialect.supports_sane_multi_rowcount``)."""
        if not rows:
            return 0
        sql, params = self.parameters(connection.dialect, rows, shared)
        return connection.exec_driver_sql(sql, params).rowcount

    def parameters(
        self,
        dialect: Dialect,
        rows: Sequence[Mapping[str, Any]],
        shared: Mapping[str, Any] | None = None,
    ) -> tuple[str, list[Any]]:
        """The statement's text for ``dialect`` and the driver's parameters for each row."""
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            compiled = self._compiled[dialect.name] = _compile(self.statement, dialect)
        return compiled.sql, compiled.parameters(rows, shared or {})


class RowQuery:
    """A SELECT by IN lists, run without SQLAlchemy's per-call statement work.

    Building a select, computing its cache key and type-processing each row cost a dispatcher
    turn more than SQLite takes to answer it. ``build(*lengths)`` makes the statement for IN
    lists of those lengths, with a ``bindparam`` per value; it is compiled once per dialect
    and lengths (a turn's lists are at most a batch long), and each row goes through its
    columns' own result processors (what ``connection.execute(select(...))`` would return).
    """

    def __init__(self, build: Callable[..., Select[Any]]) -> None:
        self.build = build
        self._compiled: dict[tuple[str, tuple[int, ...]], tuple[_Compiled, Processors]] = {}

    def execute_on(
        self, connection: StatementRunner, lengths: tuple[int, ...], values: Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        key = (connection.dialect.name, lengths)
        prepared = self._compiled.get(key)
        if prepared is None:
            prepared = self._compiled[key] = self._compile(connection.dialect, lengths)
        compiled, processors = prepared
        [params] = compiled.parameters([values], {})
        rows = connection.exec_driver_sql(compiled.sql, params).fetchall()
        if not any(processors):
            return [tuple(row) for row in rows]
        return [
            tuple(v if p is None else p(v) for p, v in zip(processors, row, strict=True))
            for row in rows
        ]

    def _compile(self, dialect: Dialect, lengths: tuple[int, ...]) -> tuple[_Compiled, Processors]:
        statement = self.build(*lengths)
        processors: Processors = [
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in statement.selected_columns
        ]
        return _compile(statement, dialect), processors


def _compile(statement: ClauseElement, dialect: Dialect) -> _Compiled:
    compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
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
    return _Compiled(compiled.string, positional, names, fixed, processors)
