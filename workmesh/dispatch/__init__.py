"""The dispatcher's decisions, free of AMQP and SQL: lifecycle, least load, scaling, the pool."""
