"""Set-up layer: the local services, broker, topics and database schema every flow and test needs."""
