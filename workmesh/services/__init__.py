"""Units of work on the database. They never commit: the caller owns the transaction."""
