"""Capabilities: the consumers (and their HTTP routes) that react to the mesh's events.

The dispatcher and the task API are the core of every mesh process. Everything else — order
sync, Bitrix24 sync, marketplace stock push, file intake — is a capability: it subscribes to
RabbitMQ through the process's one FastStream broker, may serve routes on the process's HTTP
server, and runs as its own role (``workmesh run --role <name>``) or with every other role in
``workmesh run``. A capability reads its own settings (its own ``WORKMESH_<NAME>_`` prefix), so
adding one touches no other part's settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from faststream.rabbit import RabbitBroker
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from workmesh.metrics import Metrics
from workmesh.settings import Settings


@dataclass(frozen=True)
class MeshContext:
    """What a capability gets from the process that runs it."""

    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    metrics: Metrics  # register the capability's own metrics in ``metrics.registry``
    broker: RabbitBroker  # not yet started when ``attach`` is called


class Capability(Protocol):
    # The role name: ``workmesh run --role <name>`` runs this capability alone.
    name: str

    def attach(self, mesh: MeshContext, app: web.Application) -> None:
        """Register subscribers on ``mesh.broker`` and routes on ``app``; nothing runs yet."""

    async def start(self) -> None:
        """Called once the broker and the HTTP server are up (declare topology, timers...)."""

    async def stop(self) -> None:
        """Called before the broker stops; let work in flight finish."""


def _registry() -> dict[str, Callable[[], Capability]]:
    """Role name → a factory that builds the capability with settings from the environment.

    The imports stay inside the factories so ``workmesh --help`` builds nothing.
    """

    def bitrix24() -> Capability:
        from workmesh.bitrix24 import Bitrix24Capability, Bitrix24Settings

        return Bitrix24Capability(Bitrix24Settings())

    def files() -> Capability:
        from workmesh.files.capability import FilesCapability
        from workmesh.files.settings import FilesSettings

        return FilesCapability(FilesSettings())

    def stock() -> Capability:
        from workmesh.stock.capability import StockCapability
        from workmesh.stock.settings import StockSettings

        return StockCapability(StockSettings())

    def orders() -> Capability:
        from workmesh.orders.capability import OrdersCapability
        from workmesh.orders.settings import OrdersSettings

        return OrdersCapability(OrdersSettings())

    return {"bitrix24": bitrix24, "files": files, "orders": orders, "stock": stock}


def capability_names() -> list[str]:
    return list(_registry())


def default_capabilities() -> list[Capability]:
    """Every capability, each with its settings read from the environment."""
    return [build() for build in _registry().values()]
