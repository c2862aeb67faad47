"""workmesh: a worker mesh on RabbitMQ with a least-load task dispatcher."""

__version__ = "0.1.0"
