"""`hotdeal-ops event` without a cluster: the Job it builds, and what it says and does
when the API answers, is unreachable, or refuses (RBAC). A small HTTP server stands in
for the Kubernetes API; it was never run against a live cluster here."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from kubernetes import client

from hotdeal.model import keys
from hotdeal_local.servers import free_port, ops
from hotdeal_ops.event import job_from_cronjob, job_state

NS = "games"
CRONJOB = {
    "apiVersion": "batch/v1",
    "kind": "CronJob",
    "metadata": {"name": "ev-hotdeal-load-k6", "namespace": NS, "uid": "u-123"},
    "spec": {
        "schedule": "0 0 1 1 *",
        "suspend": True,
        "jobTemplate": {
            "metadata": {"labels": {"app.kubernetes.io/component": "load-k6"}},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "k6", "image": "grafana/k6:1.1.0"}],
                    }
                },
            },
        },
    },
}


class FakeApi(BaseHTTPRequestHandler):
    """Answers the handful of calls the event runner makes."""

    status_for_all: int | None = None
    created: list[dict] = []
    calls: list[tuple[str, str]] = []  # (method, path) of every request

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _send(self, code: int, body: object, content_type: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        FakeApi.calls.append(("GET", self.path.split("?")[0]))
        if self.status_for_all:
            return self._send(
                self.status_for_all,
                {
                    "kind": "Status",
                    "code": self.status_for_all,
                    "reason": "Forbidden",
                    "message": "forbidden",
                },
            )
        path = self.path.split("?")[0]
        if path == f"/apis/batch/v1/namespaces/{NS}/cronjobs/ev-hotdeal-load-k6":
            return self._send(200, CRONJOB)
        if path.startswith(f"/apis/batch/v1/namespaces/{NS}/jobs/"):
            return self._send(
                200,
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "metadata": {"name": path.split("/")[6]},
                    "status": {
                        "succeeded": 1,
                        "conditions": [{"type": "Complete", "status": "True"}],
                    },
                },
            )
        if path == f"/api/v1/namespaces/{NS}/pods":
            return self._send(
                200,
                {
                    "kind": "PodList",
                    "apiVersion": "v1",
                    "items": [{"metadata": {"name": "load-pod"}}],
                },
            )
        if path == f"/api/v1/namespaces/{NS}/pods/load-pod/log":
            return self._send(200, "hotdeal k6 summary: target=order-redis\n", "text/plain")
        return self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound"})

    def do_POST(self) -> None:
        FakeApi.calls.append(("POST", self.path.split("?")[0]))
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeApi.created.append(body)
        self._send(201, body)


@pytest.fixture
def fake_api(tmp_path):
    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), FakeApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeApi.created = []
    FakeApi.calls = []
    FakeApi.status_for_all = None
    yield _kubeconfig(tmp_path, f"http://127.0.0.1:{port}")
    server.shutdown()


def _kubeconfig(tmp_path: Path, server: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "t",
                "clusters": [{"name": "t", "cluster": {"server": server}}],
                "users": [{"name": "t", "user": {"token": "x"}}],
                "contexts": [
                    {"name": "t", "context": {"cluster": "t", "user": "t", "namespace": NS}}
                ],
            }
        )
    )
    return path


def event(env: dict, kubeconfig: Path | str, *extra: str):
    return ops(
        {**env, "KUBECONFIG": str(kubeconfig)},
        "event",
        "--load-cronjob",
        "ev-hotdeal-load-k6",
        "--namespace",
        NS,
        "--stock",
        "77",
        *extra,
        check=False,
    )


def test_job_mirrors_the_cronjob_template():
    cronjob = client.ApiClient()._ApiClient__deserialize(CRONJOB, "V1CronJob")
    job = job_from_cronjob(cronjob, "k6-1")
    assert job.metadata.name == "k6-1"
    assert job.metadata.annotations == {"cronjob.kubernetes.io/instantiate": "manual"}
    assert job.metadata.labels == {"app.kubernetes.io/component": "load-k6"}
    owner = job.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid, owner.controller) == (
        "CronJob",
        "ev-hotdeal-load-k6",
        "u-123",
        True,
    )
    assert job.spec.template.spec.containers[0].image == "grafana/k6:1.1.0"


def test_job_state_reads_conditions():
    done = client.V1Job(
        status=client.V1JobStatus(
            conditions=[client.V1JobCondition(type="Complete", status="True")]
        )
    )
    failed = client.V1Job(
        status=client.V1JobStatus(conditions=[client.V1JobCondition(type="Failed", status="True")])
    )
    assert (job_state(done), job_state(failed), job_state(client.V1Job())) == (
        "succeeded",
        "failed",
        "running",
    )


def test_event_runs_reset_load_summary_reconcile(fake_api, stack_env, rclient, writer_proc):
    done = event(stack_env, fake_api, "--job-name", "k6-manual")
    assert done.returncode == 0, done.stdout + done.stderr
    assert rclient.hget(keys.books(1), "quantity") == "77"  # reset ran
    assert "started Job k6-manual from CronJob ev-hotdeal-load-k6" in done.stderr
    assert "k6-manual: succeeded" in done.stderr
    assert "hotdeal k6 summary: target=order-redis" in done.stdout
    report = json.loads(done.stdout.split("--- reconcile ---")[1])
    assert report["ok"] and report["redis"]["initial"] == 77
    (job,) = FakeApi.created
    assert job["metadata"]["ownerReferences"][0]["name"] == "ev-hotdeal-load-k6"
    assert job["spec"]["template"]["spec"]["containers"][0]["name"] == "k6"


def test_missing_rbac_is_explained_and_touches_nothing(fake_api, stack_env, rclient, reset):
    reset(5)
    FakeApi.status_for_all = 403
    done = event(stack_env, fake_api)
    assert done.returncode == 2
    assert (
        "RBAC: the service account may not read CronJob ev-hotdeal-load-k6 in namespace games"
        in (done.stderr)
    )
    assert "ops.rbac.create=true" in done.stderr and "Traceback" not in done.stderr
    assert rclient.hget(keys.books(1), "quantity") == "5"  # checked access before resetting


def test_unreachable_api_is_explained(tmp_path, stack_env, rclient, reset):
    reset(5)
    dead = _kubeconfig(tmp_path, f"http://127.0.0.1:{free_port()}")
    done = event(stack_env, dead)
    assert done.returncode == 2
    assert "the Kubernetes API at http://127.0.0.1:" in done.stderr and "unreachable" in done.stderr
    assert rclient.hget(keys.books(1), "quantity") == "5"


def test_no_kubernetes_configuration(stack_env):
    done = event(stack_env, "/nonexistent/kubeconfig")
    assert done.returncode == 2
    assert "no Kubernetes configuration" in done.stderr


def _rbac_request(method: str, path: str) -> tuple[str, str, str, str | None]:
    """(apiGroup, resource[/subresource], verb, name) of a namespaced API request path."""
    parts = path.strip("/").split("/")
    group = "" if parts[0] == "api" else parts[1]
    rest = parts[parts.index("namespaces") + 2 :]
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    verb = {"POST": "create"}.get(method, "get" if len(rest) > 1 else "list")
    return group, resource, verb, rest[1] if len(rest) > 1 else None


def _allows(rule: dict, group: str, resource: str, verb: str, name: str | None) -> bool:
    """RBAC's match: a rule with resourceNames allows only requests for those names."""
    names = rule.get("resourceNames")
    return (
        group in rule["apiGroups"]
        and resource in rule["resources"]
        and verb in rule["verbs"]
        and (not names or name in names)
    )


def test_the_chart_role_grants_every_call_the_runner_makes(fake_api, stack_env, writer_proc):
    """Each request the event runner really sends (recorded by the stand-in API server)
    must be allowed by the chart's ops Role: a new call without a rule fails here, not
    with 403 in a cluster (it once read jobs/{name}/status, which the Role lacked)."""
    from .test_chart import objects

    done = event(stack_env, fake_api, "--job-name", "k6-rbac")
    assert done.returncode == 0, done.stderr
    role = next(d for d in objects("load") if d["kind"] == "Role")
    requests = {_rbac_request(m, p) for m, p in FakeApi.calls}
    assert requests
    denied = {r for r in requests if not any(_allows(rule, *r) for rule in role["rules"])}
    assert not denied, denied


def test_the_role_grants_nothing_the_runner_does_not_use():
    """Least privilege: every rule is used, and the only by-name-able read (the load
    CronJob) is limited to that name; the chart has no Role without the event runner."""
    from .test_chart import objects

    role = next(d for d in objects("load") if d["kind"] == "Role")
    grants = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert grants == {
        ("batch", "cronjobs", "get"),
        ("batch", "jobs", "create"),
        ("batch", "jobs", "get"),
        ("", "pods", "list"),
        ("", "pods/log", "get"),
    }
    cronjobs = next(r for r in role["rules"] if r["resources"] == ["cronjobs"])
    assert cronjobs["resourceNames"] == ["ev-hotdeal-load-k6"]
    assert not [d for d in objects("default") if d["kind"] in ("Role", "RoleBinding")]
