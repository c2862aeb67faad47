"""The HTTP API (aiohttp, JSON, bearer tokens): tasks, workers, stats, metrics, health."""
