"""Checks of the deployment files: compose.yaml, the RabbitMQ server config, Prometheus, Grafana.

No Docker engine runs in CI, so these check the files themselves: the compose file against the
Compose Specification's schema (../shared/tools/check-compose), and the properties the files
must keep in agreement with each other and with the app.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHECK_COMPOSE = ROOT.parent / "shared" / "tools" / "check-compose"
APP_IMAGE_SERVICES = ("migrate", "api", "dispatcher")


def load_compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return compose


def load_definitions() -> dict[str, Any]:
    definitions: dict[str, Any] = json.loads((ROOT / "rabbitmq" / "definitions.json").read_text())
    return definitions


def permissions_of(user: str) -> dict[str, str]:
    entries: list[dict[str, str]] = [
        p for p in load_definitions()["permissions"] if p["user"] == user
    ]
    assert len(entries) == 1, f"{user}: {len(entries)} permission entries for vhost /"
    return entries[0]


def allows(pattern: str, name: str) -> bool:
    # RabbitMQ matches permission patterns with re:run, i.e. anywhere in the name unless
    # anchored: re.search, not re.match.
    return re.search(pattern, name) is not None


def rabbitmq_conf() -> dict[str, str]:
    settings = {}
    for line in (ROOT / "rabbitmq" / "rabbitmq.conf").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def topology_constant(name: str) -> Any:
    tree = ast.parse((ROOT / "rabbitmq" / "topology.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError(f"rabbitmq/topology.py defines no literal {name}")


def app_image_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if "build" in svc}


def test_compose_file_passes_the_compose_spec_check() -> None:
    if not CHECK_COMPOSE.is_file():
        pytest.fail(
            f"{CHECK_COMPOSE} is missing: the compose check needs the shared folder "
            "checked out beside the repository (../shared)"
        )

    result = subprocess.run(
        [sys.executable, str(CHECK_COMPOSE), "compose.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_roles_and_migrate_run_the_app_image_with_their_commands() -> None:
    compose = load_compose()

    services = app_image_services(compose)

    assert set(APP_IMAGE_SERVICES) <= set(services)
    assert services["migrate"]["command"] == ["migrate"]
    # The one-shot migrate service owns the schema; the roles must not race to migrate it.
    assert services["api"]["command"] == ["run", "--role", "api", "--no-migrate"]
    assert services["dispatcher"]["command"] == ["run", "--role", "dispatcher", "--no-migrate"]
    assert services["dispatcher"]["deploy"]["replicas"] >= 2


def test_roles_start_after_a_successful_migration_on_healthy_infrastructure() -> None:
    services = load_compose()["services"]

    for role in ("api", "dispatcher"):
        depends_on = services[role]["depends_on"]
        assert depends_on["migrate"]["condition"] == "service_completed_successfully", role
        assert depends_on["rabbitmq"]["condition"] == "service_healthy", role
        assert depends_on["postgres"]["condition"] == "service_healthy", role
    assert services["migrate"]["restart"] == "no"


def test_every_app_image_service_has_a_healthcheck_or_is_the_one_shot_migrate() -> None:
    services = app_image_services(load_compose())

    unchecked = [
        name
        for name, svc in services.items()
        if name != "migrate" and (not svc.get("healthcheck") or svc["healthcheck"].get("disable"))
    ]

    assert services, "no service builds the app image"
    assert unchecked == []
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])


def test_only_the_roles_that_serve_people_publish_a_host_port_each_its_own() -> None:
    services = app_image_services(load_compose())

    published = {
        name: [str(port).rsplit(":", 1)[0] for port in svc["ports"]]
        for name, svc in services.items()
        if svc.get("ports")
    }

    # The dispatcher (replicated) and bitrix24 serve only /metrics, reached inside the network.
    assert sorted(published) == ["api", "files", "orders", "orders-b", "stock"]
    host_ports = [port for ports in published.values() for port in ports]
    assert len(host_ports) == len(set(host_ports)), published
    # The stock and orders APIs are the seller's own tools: the seller's machine only.
    for name in ("stock", "orders", "orders-b"):
        assert all(port.startswith("127.0.0.1:") for port in published[name]), name


def test_the_two_order_sync_instances_point_at_each_other_with_their_own_databases() -> None:
    services = app_image_services(load_compose())
    a, b = services["orders"]["environment"], services["orders-b"]["environment"]

    assert (a["WORKMESH_ORDERS_INSTANCE"], b["WORKMESH_ORDERS_INSTANCE"]) == ("A", "B")
    assert a["WORKMESH_ORDERS_PEER_URL"] == "http://orders-b:8080"
    assert b["WORKMESH_ORDERS_PEER_URL"] == "http://orders:8080"
    assert "@postgres:" in a["WORKMESH_DATABASE_URL"]
    assert "@postgres-b:" in b["WORKMESH_DATABASE_URL"]
    # B migrates its own database (the migrate service knows only A's)
    assert services["orders-b"]["command"] == ["run", "--role", "orders"]


def test_every_capability_runs_as_a_role_of_its_own() -> None:
    from workmesh.capabilities import capability_names

    services = app_image_services(load_compose())
    for name in capability_names():
        assert services[name]["command"] == ["run", "--role", name, "--no-migrate"], name
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        ), name


def test_app_settings_come_from_the_environment_with_a_required_admin_token() -> None:
    services = app_image_services(load_compose())

    for name, svc in services.items():
        env = svc["environment"]
        assert env["WORKMESH_PROFILE"] == "production", name
        required = r"\$\{WORKMESH_ADMIN_TOKEN:\?[^}]*\}"
        assert re.fullmatch(required, env["WORKMESH_ADMIN_TOKEN"]), name
        assert env["WORKMESH_HTTP_HOST"] == "0.0.0.0", name
        assert str(env["WORKMESH_HTTP_PORT"]) == "8080", name
        assert "rabbitmq:5672" in env["WORKMESH_AMQP_URL"], name
        assert env["WORKMESH_DATABASE_URL"].startswith("postgresql+asyncpg://"), name


def test_compose_default_amqp_password_logs_in_as_the_workmesh_user() -> None:
    env = load_compose()["services"]["api"]["environment"]
    default_url = re.fullmatch(r"\$\{WORKMESH_AMQP_URL:-(.+)\}", env["WORKMESH_AMQP_URL"])
    assert default_url, env["WORKMESH_AMQP_URL"]
    credentials = re.match(r"amqp://([^:]+):([^@]+)@", default_url.group(1))
    assert credentials, default_url.group(1)
    user, password = credentials.groups()

    (entry,) = [u for u in load_definitions()["users"] if u["name"] == user]
    raw = base64.b64decode(entry["password_hash"])
    salt, digest = raw[:4], raw[4:]

    assert user == "workmesh"
    assert entry["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    assert hashlib.sha256(salt + password.encode()).digest() == digest


def test_prometheus_scrapes_every_role_every_dispatcher_replica_and_rabbitmq() -> None:
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())

    static_targets = {
        target
        for job in config["scrape_configs"]
        for group in job.get("static_configs", [])
        for target in group["targets"]
    }
    dns_lookups = {
        (name, sd["type"], sd["port"])
        for job in config["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        for name in sd["names"]
    }

    assert "api:8080" in static_targets
    assert ("dispatcher", "A", 8080) in dns_lookups
    from workmesh.capabilities import capability_names

    for name in capability_names():
        assert f"{name}:8080" in static_targets, name
    assert "rabbitmq:15692" in static_targets


def test_definitions_parse_and_every_permission_names_a_defined_user_and_vhost() -> None:
    definitions = load_definitions()

    users = {u["name"] for u in definitions["users"]}
    vhosts = {v["name"] for v in definitions["vhosts"]}
    granted = definitions["permissions"] + definitions["topic_permissions"]

    assert {"workmesh", "producer", "worker", "monitoring"} <= users
    assert "guest" not in users
    assert vhosts == {"/"}
    assert all(p["user"] in users and p["vhost"] in vhosts for p in granted)
    for user in definitions["users"]:
        assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256", user["name"]
        assert len(base64.b64decode(user["password_hash"])) == 4 + 32, user["name"]


def test_producer_may_only_publish_to_the_tasks_exchange() -> None:
    producer = permissions_of("producer")
    resources = [
        "workmesh.tasks",
        "workmesh.tasks.intake",
        "workmesh.events",
        "workmesh.dead",
        "workmesh.worker.w-1",
        "amq.default",
    ]

    assert not any(allows(producer["configure"], name) for name in resources)
    assert not any(allows(producer["read"], name) for name in resources)
    assert [name for name in resources if allows(producer["write"], name)] == ["workmesh.tasks"]


def test_worker_reads_worker_queues_and_publishes_only_its_own_event_keys() -> None:
    worker = permissions_of("worker")
    (topic,) = [t for t in load_definitions()["topic_permissions"] if t["user"] == "worker"]
    worker_keys = [*topology_constant("REPORT_KEYS"), topology_constant("HEARTBEAT_KEY")]
    mesh_only_keys = [*topology_constant("RELEASE_KEYS"), "submit"]

    assert not allows(worker["configure"], "workmesh.worker.w-1")
    assert allows(worker["read"], "workmesh.worker.w-1")
    assert not allows(worker["read"], "workmesh.tasks.intake")
    assert allows(worker["write"], "workmesh.events")
    assert not allows(worker["write"], "workmesh.tasks")
    assert not allows(worker["write"], "amq.default")
    assert topic["exchange"] == "workmesh.events"
    assert all(allows(topic["write"], key) for key in worker_keys), worker_keys
    assert not any(allows(topic["write"], key) for key in mesh_only_keys), mesh_only_keys


def test_mesh_user_owns_the_workmesh_names_and_reaches_worker_queues_directly() -> None:
    mesh = permissions_of("workmesh")

    for name in ("workmesh.tasks.intake", "workmesh.dispatcher.leader", "workmesh.worker.w-1"):
        assert allows(mesh["configure"], name), name
        assert allows(mesh["read"], name), name
    assert allows(mesh["write"], "amq.default")
    assert allows(mesh["write"], "workmesh.events")
    assert not allows(mesh["configure"], "other.queue")
    assert not allows(mesh["write"], "amq.topic")


def test_rabbitmq_conf_loads_the_definitions_file_compose_mounts() -> None:
    conf = rabbitmq_conf()
    rabbitmq = load_compose()["services"]["rabbitmq"]
    # "source:target[:mode]"; none of these paths holds a colon.
    mounts = dict(v.split(":")[:2] for v in rabbitmq["volumes"])

    assert conf["definitions.import_backend"] == "local_filesystem"
    assert mounts["./rabbitmq/definitions.json"] == conf["definitions.local.path"]
    # Mounted over the image's conf.d defaults, which would otherwise re-allow remote guest.
    assert mounts["./rabbitmq/rabbitmq.conf"] == "/etc/rabbitmq/conf.d/10-defaults.conf"
    assert mounts["./rabbitmq/enabled_plugins"] == "/etc/rabbitmq/enabled_plugins"


def test_rabbitmq_conf_hardening_and_limits() -> None:
    conf = rabbitmq_conf()
    plugins = (ROOT / "rabbitmq" / "enabled_plugins").read_text()

    assert conf["loopback_users.guest"] == "true"
    assert conf["prometheus.tcp.port"] == "15692"
    assert int(conf["consumer_timeout"]) > 30 * 60 * 1000  # above the 30-minute default
    assert "vm_memory_high_watermark.relative" in conf
    assert "disk_free_limit.absolute" in conf
    assert re.fullmatch(r"\s*\[\s*rabbitmq_management\s*,\s*rabbitmq_prometheus\s*\]\.\s*", plugins)


def test_grafana_dashboard_uses_the_provisioned_datasource() -> None:
    datasources = yaml.safe_load(
        (ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    dashboard = json.loads((ROOT / "grafana" / "dashboards" / "workmesh.json").read_text())
    uids = {d["uid"] for d in datasources["datasources"]}
    queries = [
        target
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]
    exprs = " ".join(t["expr"] for t in queries)

    assert all(t["datasource"]["uid"] in uids for t in queries)
    for metric in (
        "workmesh_tasks",
        "workmesh_worker_load",
        "workmesh_worker_capacity",
        "workmesh_queue_depth",
        "workmesh_dispatch_latency_seconds_bucket",
        "workmesh_dispatch_confirm_seconds_bucket",
        "faststream_received_processed_messages_total",
        "workmesh_reports_total",
        "workmesh_pool_desired_reserve",
        "rabbitmq_queue_messages_ready",
    ):
        assert metric in exprs, metric


def test_dockerfile_runs_as_a_non_root_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()

    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.MULTILINE)

    assert users, "the Dockerfile never sets USER"
    assert users[-1].split(":")[0] not in {"root", "0"}
