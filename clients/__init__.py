"""Outbound HTTP clients of the mesh (one package per external service)."""
