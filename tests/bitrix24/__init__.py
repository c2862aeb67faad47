"""Tests of the Bitrix24 batch sync, and the fake Bitrix24 portal they run against."""
