"""The dispatcher at work on RabbitMQ: leadership, intake, reports and the periodic review."""
