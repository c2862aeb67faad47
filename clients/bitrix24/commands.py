"""Commands for ``batch``: a method with its parameters, written as Bitrix24 wants them in
``cmd`` (``method?query``, the query in PHP's ``http_build_query`` form), and their outcomes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

# Bitrix24 refuses a batch of more than 50 commands, and list methods return pages of 50.
MAX_BATCH_COMMANDS = 50
PAGE_SIZE = 50


@dataclass(frozen=True)
class Command:
    method: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def creates(self) -> bool:
        """A create is not idempotent: sent twice, it makes two records."""
        return self.method.endswith(".add")

    def as_cmd(self) -> str:
        """The ``cmd`` value: ``crm.contact.list?filter%5BPHONE%5D=...``."""
        query = build_query(self.params)
        return f"{self.method}?{query}" if query else self.method


@dataclass(frozen=True)
class CommandOutcome:
    """One command's share of a batch answer: its result, or its error."""

    result: Any = None
    error: str | None = None
    description: str = ""
    total: int | None = None
    next: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def build_query(params: Mapping[str, Any]) -> str:
    """PHP ``http_build_query``: nested maps and lists become ``a[b][0]=v`` pairs."""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        _flatten(str(key), value, pairs)
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)


def _flatten(prefix: str, value: Any, pairs: list[tuple[str, str]]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(f"{prefix}[{key}]", item, pairs)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _flatten(f"{prefix}[{index}]", item, pairs)
    elif value is None:
        pairs.append((prefix, ""))
    elif isinstance(value, bool):
        pairs.append((prefix, "Y" if value else "N"))
    else:
        pairs.append((prefix, str(value)))


def by_key(part: Any) -> dict[str, Any]:
    """A batch answer's ``result``/``result_error``/... as a map.

    PHP sends an empty array as ``[]`` and an array with keys 0..n-1 as a JSON list, so each
    of these parts may come as a list or as a map.
    """
    if isinstance(part, Mapping):
        return {str(k): v for k, v in part.items()}
    if isinstance(part, list):
        return {str(i): v for i, v in enumerate(part)}
    return {}
