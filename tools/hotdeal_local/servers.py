"""Throwaway redis-server, PostgreSQL and gunicorn processes on free local ports."""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from hotdeal.config import LocalSettings
from hotdeal.process import die_with_parent
from hotdeal_local import auth

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


class Missing(RuntimeError):
    """A prerequisite program is not installed; the message says how to get it."""


def _ephemeral_low() -> int:
    """The lowest port the kernel gives outgoing connections (Linux's default 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Redis Cluster's bus listens this far above a node's port.
CLUSTER_BUS_OFFSET = 10_000


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(*, bus_offset: int = 0) -> int:
    """A port nothing holds, below the kernel's ephemeral range: a port from that range
    can be taken by any outgoing connection (the suite makes thousands, and keeps
    store connections open) between this check and the server's bind, and the server
    then gives up (gunicorn's "Can't connect", exit 1: the likely cause of a legacy that
    exited 1 at its start once in `make test`, 2026-12-03). With `bus_offset`, the port
    that far above it is free and below the range too (a cluster node's bus port)."""
    top = _ephemeral_low() - bus_offset
    pick = secrets.SystemRandom()  # not `random`: a test may seed it in every process alike
    for _ in range(200):
        port = pick.randrange(max(top - 12_000, 2_000), top)
        if _bindable(port) and (not bus_offset or _bindable(port + bus_offset)):
            return port
    raise RuntimeError(f"no free port below {top} after 200 tries")


def port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(what: str, ready: object, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        with contextlib.suppress(Exception):
            if ready():  # type: ignore[operator]
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


def need_program(program: str, package: str) -> str:
    """The program's path, or Missing naming the Debian package that brings it."""
    path = shutil.which(program)
    if path is None:
        raise Missing(f"{program} not found: install the Debian package {package} (make deps)")
    return path


class RedisServer:
    """redis-server with a password and AOF on, data in `workdir`; restartable in place.

    `appendfsync always` by default: Debian's Redis 7.0 has no WAITAOF, so that is how
    the services' default durability (fsync) is met. `replica_of` makes it a replica."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        appendfsync: str = "always",
        binary: str | None = None,
        password: str | None = None,
        replica_of: RedisServer | None = None,
        primary_port: int | None = None,
        cluster: bool = False,
    ) -> None:
        self.binary = binary or need_program("redis-server", "redis-server")
        self.cluster = cluster
        self.workdir = workdir
        self.port = port or free_port()
        self.password = password or (replica_of.password if replica_of else secrets.token_hex(12))
        self.appendfsync = appendfsync
        self.replica_of = replica_of
        # Where a replica reaches its primary (e.g. through a proxy that can lag).
        self.primary_port = primary_port
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # The password goes in through stdin (a config file "-"), not argv, so `ps` can't show it.
        config = "\n".join(
            [
                f"port {self.port}",
                "bind 127.0.0.1",
                f"dir {self.workdir}",
                f'requirepass "{self.password}"',
                "appendonly yes",
                f"appendfsync {self.appendfsync}",
                'save ""',
                "maxmemory-policy noeviction",
                "repl-diskless-sync-delay 0",
                *(
                    [
                        f"replicaof 127.0.0.1 {self.primary_port or self.replica_of.port}",
                        f'masterauth "{self.password}"',
                    ]
                    if self.replica_of
                    else []
                ),
                *(
                    [
                        "cluster-enabled yes",
                        f"cluster-config-file {self.workdir / 'nodes.conf'}",
                        "cluster-node-timeout 3000",
                    ]
                    if self.cluster
                    else []
                ),
                f"logfile {self.workdir / 'redis.log'}",
                "daemonize no",
            ]
        )
        self.proc = subprocess.Popen(
            [self.binary, "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(config.encode())
        self.proc.stdin.close()
        _wait("redis-server", self.ping, 15, self.proc)
        return self

    def ping(self) -> bool:
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(15)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


class RedisClusterServers:
    """A Redis Cluster of `size` primaries on loopback (no replicas), made as an operator
    would: redis-server --cluster-enabled yes, then redis-cli --cluster create."""

    def __init__(
        self,
        workdir: Path,
        size: int = 3,
        *,
        appendfsync: str = "always",
        binary: str | None = None,
    ) -> None:
        password = secrets.token_hex(12)
        self.nodes = [
            RedisServer(
                workdir / f"node-{i}",
                free_port(bus_offset=CLUSTER_BUS_OFFSET),
                appendfsync=appendfsync,
                binary=binary,
                password=password,
                cluster=True,
            )
            for i in range(size)
        ]
        self.password = password

    @property
    def url(self) -> str:
        """Any node will do: the client learns the others from it."""
        return self.nodes[0].url

    def start(self) -> RedisClusterServers:
        for node in self.nodes:
            node.start()
        cli = need_program("redis-cli", "redis-tools")
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            env={**os.environ, "REDISCLI_AUTH": self.password},  # not in argv (ps)
            capture_output=True,
            text=True,
            check=True,
        )
        _wait("the Redis cluster", self.ready, 30, None)
        return self

    def ready(self) -> bool:
        import redis

        for node in self.nodes:
            client = redis.Redis.from_url(node.url, decode_responses=True)
            try:
                if "cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                    return False
            finally:
                client.close()
        return True

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _postgres_bindir() -> Path:
    override = LocalSettings.from_env().pg_bindir
    if override:
        return Path(override)
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3])
    )
    if not found:
        raise Missing(
            "PostgreSQL server not found: install the Debian package postgresql (make deps)"
        )
    return Path(found[-1]).parent


_TEMPLATES: dict[Path, Path] = {}


def _template(bindir: Path) -> Path:
    """A stopped cluster with the empty `hotdeal` database, made once per process (per
    PostgreSQL version) and copied for each new server: initdb and createdb cost ~1.5 s
    a server, a copy ~0.1 s, and the suite starts dozens."""
    made = _TEMPLATES.get(bindir)
    if made is None or not (made / "PG_VERSION").exists():
        maker = PostgresServer(Path(tempfile.mkdtemp(prefix="hotdeal-pg-template-")))
        maker._initdb()
        maker.stop()
        made = _TEMPLATES[bindir] = maker.data
        atexit.register(shutil.rmtree, maker.workdir, ignore_errors=True)
    return made


class PostgresServer:
    """A private PostgreSQL cluster in `workdir` (trust auth on 127.0.0.1 only).

    PostgreSQL refuses to run as root, so as root it runs as the `postgres` user."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        max_connections: int = 400,
    ) -> None:
        self.bindir = _postgres_bindir()
        self.workdir = workdir
        self.data = workdir / "data"
        self.port = port or free_port()
        self.max_connections = max_connections
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/hotdeal"

    def new_database(self, name: str) -> str:
        """An empty database beside `hotdeal` (a fresh install's); its URL."""
        createdb = [str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port)]
        self._run(*createdb, "-U", "postgres", name)
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def _run(self, *args: str) -> None:
        subprocess.run(
            [*self.as_user, *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd="/",
        )

    def _reachable_by_postgres(self, path: Path) -> bool:
        probe = subprocess.run([*self.as_user, "test", "-x", str(path)], cwd="/")
        return probe.returncode == 0

    def start(self) -> PostgresServer:
        if not (self.data / "PG_VERSION").exists():
            self._prepare_workdir()
            self._run("cp", "-a", str(_template(self.bindir)), str(self.data))
        self._postmaster()
        return self

    def _prepare_workdir(self) -> None:
        self.workdir.parent.mkdir(parents=True, exist_ok=True)
        if self.as_user and not self._reachable_by_postgres(self.workdir.parent):
            # e.g. a checkout under /root: the postgres user can't enter it.
            self.workdir = Path(tempfile.mkdtemp(prefix="hotdeal-pg-", dir="/var/tmp"))
            self.data = self.workdir / "data"
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.as_user:
            shutil.chown(self.workdir, "postgres", "postgres")
            os.chmod(self.workdir, 0o700)

    def _initdb(self) -> None:
        """A new cluster holding the empty `hotdeal` database."""
        self._prepare_workdir()
        initdb = [str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres"]
        self._run(*initdb, "--auth=trust", "-E", "UTF8", "--no-instructions")
        self._postmaster()
        self.new_database("hotdeal")

    def _postmaster(self) -> None:
        options = [
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-k",
            str(self.workdir),
            "-c",
            f"max_connections={self.max_connections}",
        ]
        # Always durable: the write-behind writer deletes an order from the Redis stream
        # once its commit returns, so a commit that a crash can undo would lose orders
        # (the fault tests crash PostgreSQL on purpose).
        # The postmaster runs as our child (not daemonized by pg_ctl) and gets SIGINT (a
        # fast shutdown) if we die: `make up` never leaves a PostgreSQL behind.
        if self.as_user:
            launcher = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
            launcher += ["--pdeathsig=INT", "--"]
            preexec = None
        else:
            launcher, preexec = [], die_with_parent(signal.SIGINT)
        log = open(self.workdir / "postgres.log", "ab")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(
            [*launcher, str(self.bindir / "postgres"), "-D", str(self.data), *options],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,
            cwd="/",
        )
        log.close()
        _wait("postgres", self._accepting, 60, self.proc)

    def _accepting(self) -> bool:
        done = subprocess.run(
            [str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
            check=False,
        )
        return done.returncode == 0

    def stop(self, mode: str = "fast") -> None:
        """`fast` (SIGINT: roll back, checkpoint) or `immediate` (SIGQUIT: a crash)."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        self.proc.send_signal(signal.SIGQUIT if mode == "immediate" else signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def running(self) -> bool:
        return port_taken(self.port)


class Process:
    """A gunicorn service or the writer, with the environment the images get."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        *,
        health_url: str | None = None,
        log: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.health_url = health_url
        self.log = log
        self.metrics_port: int | None = None
        self.admin_port: int | None = None  # gunicorn services: hotdeal.admin
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> Process:
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.argv,
            env={**os.environ, **self.env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),
            cwd=REPO,
        )
        urls = [self.health_url] if self.health_url else []
        if self.admin_port:
            urls.append(f"http://127.0.0.1:{self.admin_port}/healthz")
        for url in urls:
            _wait(
                self.name,
                lambda u=url: urllib.request.urlopen(u, timeout=1).status == 200,
                timeout,
                self.proc,
            )
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


def gunicorn(
    service: str,
    port: int,
    env: dict[str, str],
    log: Path | None = None,
    app: str | None = None,
) -> Process:
    """The service exactly as its image runs it: `gunicorn -c images/<service>/gunicorn.conf.py`
    (`app`: another WSGI app under the same settings, e.g. a benchmark ceiling)."""
    conf = REPO / "images" / service / "gunicorn.conf.py"
    admin = free_port()
    proc = Process(
        app or service,
        [str(BIN / "gunicorn"), "-c", str(conf), *([app] if app else [])],
        {
            # Locally: the local identity provider's tokens, and ab's workshop routes.
            **auth.service_env(),
            "HOTDEAL_WORKSHOP_ROUTES": "true",
            **env,
            "HOTDEAL_BIND": f"127.0.0.1:{port}",
            "HOTDEAL_ADMIN_BIND": f"127.0.0.1:{admin}",
        },
        health_url=f"http://127.0.0.1:{port}/healthz",
        log=log,
    )
    proc.admin_port = admin
    return proc


def writer(
    env: dict[str, str],
    log: Path | None = None,
    name: str = "writer",
    metrics_port: int | None = None,
) -> Process:
    port = metrics_port or free_port()
    proc = Process(
        name,
        [str(BIN / "hotdeal-writer")],
        {
            **env,
            "HOTDEAL_WRITER_METRICS_PORT": str(port),
            "HOTDEAL_WRITER_METRICS_ADDR": "127.0.0.1",
        },
        health_url=f"http://127.0.0.1:{port}/metrics",
        log=log,
    )
    proc.metrics_port = port
    return proc


def ops(
    env: dict[str, str], *args: str, check: bool = True, timeout: float | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "hotdeal-ops"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
    )


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by a process and its descendants that are
    alive (gunicorn's workers, PostgreSQL's backends), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    used: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        used[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += used.get(current, 0.0)
        todo += children.get(current, [])
    return total
