"""The service images as containers (podman, no Docker engine): non-root, read-only
root filesystem, secrets as files, the gunicorn command `make up` uses; they answer
/readyz and sell stock against the harness's Redis and PostgreSQL.
Run by `make test-images`, which builds the images first."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from hotdeal_local import auth
from hotdeal_local.servers import REPO, free_port

from .helpers import Service, buyers, reconcile, stampede, statuses, workdir

pytestmark = pytest.mark.images

TAG = os.environ.get("TAG", "dev")
PODMAN = ["podman", "--runtime", "/usr/sbin/runc"]
ENV = {**os.environ, "CONTAINERS_CONF": str(REPO / "images" / "podman" / "containers.conf")}


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*PODMAN, *args], capture_output=True, text=True, env=ENV, check=check)


def image(service: str) -> str:
    name = f"localhost/hotdeal-{service}:{TAG}"
    if podman("image", "exists", name, check=False).returncode != 0:
        pytest.fail(f"{name} is not built: run `make images` (make test-images does)")
    return name


@pytest.fixture(scope="module")
def secrets(stack_env) -> Path:
    """The connection URLs as files, as the chart mounts its Secrets."""
    folder = workdir("secrets")
    files = {
        "database-url": stack_env["HOTDEAL_DATABASE_URL"],
        "redis-url": stack_env["HOTDEAL_REDIS_URL"],
        # The identity provider's public key, as auth.existingSecret mounts it.
        "public-key.pem": auth.service_env()["HOTDEAL_AUTH_PUBLIC_KEY"],
    }
    for key, value in files.items():
        (folder / key).write_text(value)
        (folder / key).chmod(0o644)  # readable by the image's uid 10001
    return folder


def run(
    service: str,
    secrets: Path,
    *command: str,
    port: int | None = None,
    admin_port: int | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Start a hardened container the way the chart runs the pod; returns its id."""
    args = [
        "run",
        "-d",
        "--network",
        "host",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "-v",
        f"{secrets}/database-url:/var/run/secrets/hotdeal/database/database-url:ro",
        "-v",
        f"{secrets}/redis-url:/var/run/secrets/hotdeal/redis/redis-url:ro",
        "-e",
        "HOTDEAL_DATABASE_URL_FILE=/var/run/secrets/hotdeal/database/database-url",
        "-e",
        "HOTDEAL_REDIS_URL_FILE=/var/run/secrets/hotdeal/redis/redis-url",
        "-v",
        f"{secrets}/public-key.pem:/var/run/secrets/hotdeal/auth/public-key.pem:ro",
        "-e",
        "HOTDEAL_AUTH_PUBLIC_KEY_FILE=/var/run/secrets/hotdeal/auth/public-key.pem",
        "-e",
        f"HOTDEAL_AUTH_ISSUER={auth.ISSUER}",
        "-e",
        f"HOTDEAL_AUTH_AUDIENCE={auth.AUDIENCE}",
        "-e",
        "HOTDEAL_WORKSHOP_ROUTES=true",
        "-e",
        "HOTDEAL_HOLD_MS=5",
        "-e",
        "HOTDEAL_WORKERS=2",
    ]
    if port:
        # Host network: every container needs ports of its own (the admin one too).
        args += ["-e", f"HOTDEAL_BIND=127.0.0.1:{port}"]
        args += ["-e", f"HOTDEAL_ADMIN_BIND=127.0.0.1:{admin_port or free_port()}"]
    for key, value in (env or {}).items():
        args += ["-e", f"{key}={value}"]
    return podman(*args, image(service), *command).stdout.strip()


@pytest.fixture
def containers() -> Iterator[list[str]]:
    started: list[str] = []
    yield started
    for cid in started:
        podman("rm", "-f", cid, check=False)


def serve(service: str, secrets: Path, containers: list[str]) -> Service:
    port, admin = free_port(), free_port()
    containers.append(run(service, secrets, port=port, admin_port=admin))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            live = requests.get(f"{url}/healthz", timeout=2).status_code == 200
            # The admin listener (probes, scrapes) runs in the read-only image too.
            if live and requests.get(f"http://127.0.0.1:{admin}/readyz", timeout=2).ok:
                return Service(service, url, None)  # type: ignore[arg-type]
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            logs = podman("logs", containers[-1], check=False)
            pytest.fail(f"{service} never ready:\n{logs.stdout}{logs.stderr}")
        time.sleep(0.5)


@pytest.mark.parametrize("service", ["legacy", "order-redis"])
def test_image_config(service):
    config = json.loads(podman("image", "inspect", image(service)).stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    assert config["Cmd"] == ["gunicorn", "-c", "/app/gunicorn.conf.py"]
    assert not any("PASSWORD" in e or "redis://" in e for e in config.get("Env", []))


@pytest.mark.parametrize("service", ["legacy", "order-redis"])
def test_non_root_and_read_only_root(service):
    done = podman(
        "run",
        "--rm",
        "--network",
        "none",
        "--read-only",
        "--tmpfs",
        "/tmp",
        image(service),
        "sh",
        "-c",
        "id -u; touch /app/x 2>&1; touch /tmp/ok && echo tmp-ok",
        check=False,
    )
    lines = done.stdout.splitlines()
    assert lines[0] == "10001"
    assert "Read-only file system" in done.stdout
    assert lines[-1] == "tmp-ok"


# Top-level modules each image must (True) or must not (False) be able to import.
CONTENTS = {
    "legacy": {
        "hotdeal_legacy": True,
        "hotdeal": True,
        "yaml": True,
        "hotdeal_order_redis": False,
        "hotdeal_ops": False,
        "hotdeal_local": False,
        "kubernetes": False,
    },
    "order-redis": {
        "hotdeal_order_redis": True,
        "hotdeal_ops": True,
        "kubernetes": True,
        "hotdeal_legacy": False,
        "hotdeal_local": False,
    },
}


@pytest.mark.parametrize("service", list(CONTENTS))
def test_an_image_carries_only_what_its_processes_run(service):
    """The built image, as tests/test_images_contents.py checks its recipe."""
    probe = (
        "import importlib.util as u, json, sys; "
        "print(json.dumps({m: u.find_spec(m) is not None for m in sys.argv[1:]}))"
    )
    done = podman(
        "run", "--rm", "--network", "none", image(service),
        "python", "-c", probe, *CONTENTS[service],
    )  # fmt: skip
    assert json.loads(done.stdout) == CONTENTS[service]
    scripts = podman("run", "--rm", "--network", "none", image(service), "ls", "/opt/venv/bin")
    has_ops = "hotdeal-ops" in scripts.stdout.split()
    assert has_ops == (service == "order-redis")
    assert "hotdeal-local" not in scripts.stdout.split()


def test_order_redis_and_writer_containers_sell_and_persist(secrets, containers, reset, stack_env):
    reset(20)
    service = serve("order-redis", secrets, containers)
    containers.append(
        run(
            "order-redis",
            secrets,
            "hotdeal-writer",
            env={"HOTDEAL_WRITER_METRICS_PORT": str(free_port())},
        )
    )
    got = statuses(stampede(service, buyers(30), concurrency=30))
    assert got == {201: 20, 409: 10}
    code, report = reconcile(stack_env)
    assert code == 0, report["violations"]
    assert report["redis"]["persisted"] == 20  # written by the writer container


def test_legacy_container_sells_exactly_the_stock(secrets, containers, reset, stack_env):
    reset(10)
    service = serve("legacy", secrets, containers)
    assert statuses(stampede(service, buyers(25), concurrency=25)) == {201: 10, 409: 15}
    assert service.get("/order", timeout=5).text == "Out Of Stock"
    code, report = reconcile(stack_env)
    assert code == 0, report["violations"]


def test_ops_runs_in_the_image(secrets, reset):
    reset(3)
    cid = run("order-redis", secrets, "hotdeal-ops", "reconcile", "--product", "1")
    assert podman("wait", cid).stdout.strip() == "0"
    report = json.loads(podman("logs", cid).stdout)
    podman("rm", "-f", cid)
    assert report["ok"] and report["redis"]["initial"] == 3


def test_writer_image_process_serves_its_metrics(secrets, containers):
    port = free_port()
    containers.append(
        run(
            "order-redis", secrets, "hotdeal-writer", env={"HOTDEAL_WRITER_METRICS_PORT": str(port)}
        )
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            break
        except requests.RequestException:
            assert time.monotonic() < deadline, podman("logs", containers[-1]).stderr
            time.sleep(0.5)
    assert "hotdeal_writer_orders_persisted_total" in text
