"""Bitrix24 REST client: ``batch`` of at most 50 commands, list paging, kept within the
portal's request-rate and operating-time limits on our side."""

from clients.bitrix24.client import Bitrix24Client, CallObserver, Endpoint, RetryPolicy
from clients.bitrix24.commands import MAX_BATCH_COMMANDS, PAGE_SIZE, Command, CommandOutcome
from clients.bitrix24.errors import (
    AmbiguousFailure,
    Bitrix24Error,
    OperationTimeLimit,
    QueryLimitExceeded,
)
from clients.bitrix24.limits import LeakyBucket, OperatingBudget
from clients.bitrix24.packer import CommandPacker

__all__ = [
    "MAX_BATCH_COMMANDS",
    "PAGE_SIZE",
    "AmbiguousFailure",
    "Bitrix24Client",
    "Bitrix24Error",
    "CallObserver",
    "Command",
    "CommandOutcome",
    "CommandPacker",
    "Endpoint",
    "LeakyBucket",
    "OperatingBudget",
    "OperationTimeLimit",
    "QueryLimitExceeded",
    "RetryPolicy",
]
