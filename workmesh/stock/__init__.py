"""Marketplace stock: pollers, the stock ledger, the stock pusher and their HTTP API."""
