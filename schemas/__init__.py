"""Pydantic models for every message and HTTP body: the public contract in code."""
