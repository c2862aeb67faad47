"""RabbitMQ topology as data (topology.py) and the server config compose mounts."""
