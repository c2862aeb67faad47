"""Web pages of the api role: ``/app/`` for people who take tasks, ``/ops/`` for operators,
and the operator overview ``GET /api/v1/ops/overview`` they read (docs/web.md)."""

from workmesh.web.setup import attach_web

__all__ = ["attach_web"]
