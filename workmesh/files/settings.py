"""The files capability's settings (prefix ``WORKMESH_FILES_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, PositiveFloat, PositiveInt, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class FilesSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WORKMESH_FILES_")

    # Where uploaded files and analysis results live (the local-disk storage).
    directory: Path = Path("./data/files")
    # The chunk size a client gets unless it asks for another within the bounds below.
    chunk_size: int = Field(default=8 * MiB, ge=64 * 1024, le=256 * MiB)
    min_chunk_size: int = Field(default=256 * 1024, ge=1)
    max_chunk_size: int = Field(default=64 * MiB, ge=1)
    max_file_size: int = Field(default=64 * 1024 * MiB, ge=1)
    max_result_size: int = Field(default=1024 * MiB, ge=1)

    # The refer key is renewed this often (seconds)...
    refer_interval: PositiveFloat = 90.0
    # ...for this long after it was first issued, when renewal stops and the last key expires...
    refer_lifetime: PositiveFloat = 600.0
    # ...or as soon as the parser starts downloading, when this is on.
    stop_on_download: bool = True

    # Concurrent downloads of one file (the seed: "one file may be downloaded by 10 users").
    max_downloaders: PositiveInt = 10
    # The base of the download URLs published in events and SSE; empty: this process's address.
    public_url: str = ""
    # Rotation messages settled in one database transaction at most.
    rotation_batch: int = Field(default=256, ge=1, le=5000)
    # How long a renewal may wait for others to share its transaction (seconds): renewals
    # become this much later, and the mesh spends far less CPU on each.
    rotation_linger: float = Field(default=0.25, ge=0, le=5)
    # An idle SSE stream gets a comment this often, so proxies keep it open.
    sse_keepalive: PositiveFloat = 15.0

    @model_validator(mode="after")
    def _chunk_bounds(self) -> FilesSettings:
        if not self.min_chunk_size <= self.chunk_size <= self.max_chunk_size:
            raise ValueError("chunk_size must lie between min_chunk_size and max_chunk_size")
        return self
