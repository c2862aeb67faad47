"""Orders and their two-way sync with a peer instance (docs/sync.md)."""
