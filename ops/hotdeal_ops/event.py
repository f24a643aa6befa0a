"""`hotdeal-ops event`: the whole event from inside the cluster.

reset -> start the load Job from the chart's suspended CronJob (what
`kubectl create job --from=cronjob/...` does) -> follow it -> print its summary (the
load pod's log) -> reconcile. Kubernetes access goes through the official client with
the pod's service account (the chart's ops Role), or a kubeconfig outside a cluster.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import urllib3.exceptions
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from sqlalchemy import Engine

from hotdeal.redis_client import Client
from hotdeal_ops.reconcile import reconcile
from hotdeal_ops.reset import reset

NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class EventError(RuntimeError):
    """Something an operator must fix; the message says what."""


def connect() -> client.ApiClient:
    try:
        config.load_incluster_config()
    except ConfigException:
        try:
            config.load_kube_config()
        except (ConfigException, FileNotFoundError, TypeError) as exc:
            raise EventError(
                "no Kubernetes configuration: run this inside the cluster (the chart's "
                "event CronJob) or point KUBECONFIG at a kubeconfig"
            ) from exc
    api = client.ApiClient()
    # Fail fast when the API server is down instead of retrying for minutes.
    api.configuration.retries = 1
    return api


def namespace(explicit: str | None) -> str:
    if explicit:
        return explicit
    if NAMESPACE_FILE.exists():
        return NAMESPACE_FILE.read_text().strip()
    return "default"


def explain(exc: Exception, action: str, ns: str) -> EventError:
    """Turn a client failure into a message an operator can act on."""
    if isinstance(exc, ApiException):
        if exc.status == 403:
            return EventError(
                f"RBAC: the service account may not {action} in namespace {ns}. Install the "
                "chart with ops.rbac.create=true, or bind an equivalent Role (cronjobs: get; "
                "jobs: create, get; pods: list; pods/log: get)."
            )
        if exc.status == 401:
            return EventError(
                f"the Kubernetes API refused our credentials while trying to {action}"
            )
        if exc.status == 404:
            return EventError(f"not found while trying to {action} in namespace {ns}")
        return EventError(f"the Kubernetes API answered {exc.status} {exc.reason} to {action}")
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        host = client.Configuration.get_default_copy().host
        return EventError(f"the Kubernetes API at {host} is unreachable ({action}): {exc}")
    return EventError(f"{action}: {exc}")


def job_from_cronjob(cronjob: client.V1CronJob, name: str) -> client.V1Job:
    """The Job `kubectl create job --from=cronjob/<name>` would create."""
    template = cronjob.spec.job_template
    meta = template.metadata or client.V1ObjectMeta()
    return client.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=client.V1ObjectMeta(
            name=name,
            labels=dict(meta.labels or {}),
            annotations={**(meta.annotations or {}), "cronjob.kubernetes.io/instantiate": "manual"},
            owner_references=[
                client.V1OwnerReference(
                    api_version="batch/v1",
                    kind="CronJob",
                    name=cronjob.metadata.name,
                    uid=cronjob.metadata.uid,
                    controller=True,
                )
            ],
        ),
        spec=template.spec,
    )


def job_state(job: client.V1Job) -> str:
    status = job.status or client.V1JobStatus()
    for condition in status.conditions or []:
        if condition.status == "True" and condition.type in ("Complete", "SuccessCriteriaMet"):
            return "succeeded"
        if condition.status == "True" and condition.type in ("Failed", "FailureTarget"):
            return "failed"
    return "running"


class LoadRun:
    def __init__(self, api: client.ApiClient, ns: str, say: Callable[[str], None]) -> None:
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.ns = ns
        self.say = say

    def cronjob(self, name: str) -> client.V1CronJob:
        try:
            return self.batch.read_namespaced_cron_job(name, self.ns)
        except Exception as exc:
            raise explain(exc, f"read CronJob {name}", self.ns) from None

    def start(self, cronjob: client.V1CronJob, job_name: str) -> client.V1Job:
        try:
            return self.batch.create_namespaced_job(self.ns, job_from_cronjob(cronjob, job_name))
        except Exception as exc:
            raise explain(exc, f"create Job {job_name}", self.ns) from None

    def wait(self, job_name: str, timeout_s: float) -> str:
        started = time.monotonic()
        last = ""
        while True:
            try:
                # GET jobs/{name}: the Role grants `jobs: get`; the /status subresource
                # would need a rule of its own (it answered 403 in a real cluster).
                job = self.batch.read_namespaced_job(job_name, self.ns)
            except Exception as exc:
                raise explain(exc, f"read Job {job_name}", self.ns) from None
            state = job_state(job)
            status = job.status or client.V1JobStatus()
            line = (
                f"{job_name}: {state} (active {status.active or 0}, succeeded "
                f"{status.succeeded or 0}, failed {status.failed or 0})"
            )
            elapsed = time.monotonic() - started
            if line != last or int(elapsed) % 30 == 0:
                self.say(f"[{elapsed:6.0f}s] {line}")
                last = line
            if state != "running":
                return state
            if elapsed > timeout_s:
                raise EventError(f"{job_name} still running after {timeout_s:g}s")
            time.sleep(2)

    def summary(self, job_name: str, tail: int = 40) -> str:
        try:
            pods = self.core.list_namespaced_pod(
                self.ns, label_selector=f"batch.kubernetes.io/job-name={job_name}"
            ).items
            return "\n".join(
                self.core.read_namespaced_pod_log(p.metadata.name, self.ns, tail_lines=tail)
                for p in pods
            )
        except Exception as exc:
            raise explain(exc, f"read the logs of {job_name}", self.ns) from None


def run_event(
    args: Any,
    engine: Engine,
    client: Client,
    say: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
) -> int:
    """reset -> load Job -> wait -> summary -> reconcile; 0 only if the load succeeded
    and the books balance."""
    ns = namespace(args.namespace)
    load = LoadRun(connect(), ns, say)
    cronjob = load.cronjob(args.load_cronjob)  # check access before touching any data
    say(f"resetting product {args.product} to {args.stock} units (a new event: its orders go)")
    reset(
        engine,
        client,
        args.product,
        args.stock,
        slots=args.slots,
        opens_at=None,
        discard_orders=True,
    )
    job_name = args.job_name or f"{args.load_cronjob}-{int(time.time())}"[-63:]
    load.start(cronjob, job_name)
    say(f"started Job {job_name} from CronJob {args.load_cronjob} in {ns}")
    state = load.wait(job_name, args.timeout)
    print(f"--- load summary ({job_name}: {state}) ---")
    print(load.summary(job_name))
    report = reconcile(engine, client, args.product, wait_s=args.timeout)
    print("--- reconcile ---")
    print(json.dumps(report, indent=2))
    return 0 if state == "succeeded" and report["ok"] else 1
