"""Bitrix24 batch sync of clinic receptions (issue 5): the ``bitrix24`` capability."""

from workmesh.bitrix24.capability import Bitrix24Capability
from workmesh.bitrix24.settings import Bitrix24Settings

__all__ = ["Bitrix24Capability", "Bitrix24Settings"]
