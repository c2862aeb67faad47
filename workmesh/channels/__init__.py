"""How workers without their own AMQP consumer get tasks: long and short poll, WebSocket,
webhook and email notifications, and the web page for people (see docs/channels.md)."""
