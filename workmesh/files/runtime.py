"""What the files routes share in one process."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from workmesh.files.bus import FilesBus
from workmesh.files.downloads import DownloadLimiter
from workmesh.files.notifier import Notifier
from workmesh.files.rotation import RotationSchedule
from workmesh.files.settings import FilesSettings
from workmesh.files.storage import Storage


class FilesMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.chunks = Counter(
            "workmesh_files_chunks",
            "Chunk uploads by outcome (stored, duplicate, refused).",
            ["outcome"],
            registry=registry,
        )
        self.upload_bytes = Counter(
            "workmesh_files_upload_bytes", "Bytes of chunks stored.", registry=registry
        )
        self.downloads = Counter(
            "workmesh_files_downloads",
            "Downloads by refer key by outcome (served, busy, refused).",
            ["outcome"],
            registry=registry,
        )
        self.renewals = Counter(
            "workmesh_files_refer_renewals",
            "Refer keys renewed by the rotation chain.",
            registry=registry,
        )
        self.batch_size = Histogram(
            "workmesh_files_rotation_batch_size",
            "Rotation messages settled in one transaction.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
            registry=registry,
        )
        self.lateness = Histogram(
            "workmesh_files_refer_lateness_seconds",
            "How late a renewal (or expiry) ran after it was due.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=registry,
        )


@dataclass
class FilesRuntime:
    settings: FilesSettings
    sessions: async_sessionmaker[AsyncSession]
    storage: Storage
    bus: FilesBus
    schedule: RotationSchedule
    public_url: str
    metrics: FilesMetrics
    limiter: DownloadLimiter
    notifier: Notifier | None = None
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    # Set once the delay queue is bound: a key announced before would start no chain.
    chain_ready: asyncio.Event = field(default_factory=asyncio.Event)
