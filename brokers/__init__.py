"""The one place a RabbitMQ broker is built, with every router and middleware."""

from brokers.rabbit import build_broker

__all__ = ["build_broker"]
