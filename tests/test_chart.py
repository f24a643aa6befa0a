"""The Helm chart, verified offline: lint and render under helm 3 and 4, validate every
rendered manifest for the Kubernetes versions the README claims, and check what the
objects contain."""

from __future__ import annotations

import base64
import json
import shlex
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

import pytest
import yaml

from hotdeal_local.servers import REPO

CHART = REPO / "charts" / "hotdeal"
TOOLS = Path(sys.prefix) / "tools"
HELMS = ["helm3", "helm4"]
KUBE_VERSIONS = ["1.29.0", "1.33.0"]
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "TestRun"}
PROFILES = {
    "default": {},
    "external": {
        "database": {"oracle": {"enabled": False}, "existingSecret": "rds-oracle"},
        "redis": {"enabled": False, "existingSecret": "elasticache"},
        "auth": {
            "existingSecret": "idp-key",
            "issuer": "https://id.example",
            "devKeys": {"enabled": False},
        },
    },
    "external-urls": {
        "database": {
            "oracle": {"enabled": False},
            "externalUrl": "oracle+oracledb://u:p@rds.example:1521/?service_name=ORCL",
        },
        "redis": {"enabled": False, "externalUrl": "rediss://:t@cache.example:6379/0"},
    },
    "monitoring": {
        "monitoring": {
            "serviceMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
            "dashboard": {"enabled": True},
        },
        "redis": {"exporter": {"enabled": True}},
    },
    "load": {
        "load": {"enabled": True},
        "orderRedis": {"hpa": {"enabled": True}},
    },
    "legacy-only": {
        "orderRedis": {"enabled": False},
        "writer": {"enabled": False},
        "legacy": {"slots": 8},
    },
    "redis-only": {"legacy": {"enabled": False}},
    "inline": {"orderRedis": {"orderWrite": "inline"}, "writer": {"enabled": False}},
    "elasticache-cluster": {
        "redis": {"enabled": False, "existingSecret": "elasticache", "clusterMode": True},
    },
}


# Every render of this chart below starts from skaffold dev's identity setup (a chart
# with defaults only refuses to render: it needs to know the identity provider; see
# test_buyer_identity_needs_a_key_source). Later -f/--set override it.
# Values files of this process's own (two pytest workers must not rewrite each other's).
SCRATCH = Path(tempfile.mkdtemp(prefix="hotdeal-chart-"))
DEV_IDENTITY = SCRATCH / "dev-identity.yaml"
DEV_IDENTITY.write_text(
    yaml.safe_dump({"auth": {"devKeys": {"enabled": True}}, "workshopRoutes": True})
)


def helm(
    binary: str, *args: str, check: bool = True, identity: bool = True
) -> subprocess.CompletedProcess:
    argv = list(args)
    if identity and argv[:1] in (["template"], ["install"]) and str(CHART) in argv:
        argv.insert(argv.index(str(CHART)) + 1, f"--values={DEV_IDENTITY}")
    return subprocess.run([str(TOOLS / binary), *argv], capture_output=True, text=True, check=check)


@cache
def render(profile: str, binary: str = "helm4") -> str:
    values = SCRATCH / f"{profile}.yaml"
    values.write_text(yaml.safe_dump(PROFILES[profile]))
    done = helm(binary, "template", "ev", str(CHART), "-n", "games", "-f", str(values))
    return done.stdout


def objects(profile: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(render(profile)) if d]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs: list[dict]) -> dict[str, dict]:
    """Every pod template, by owner name."""
    specs = {}
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            specs[d["metadata"]["name"]] = d["spec"]["template"]
        elif d["kind"] == "CronJob":
            specs[d["metadata"]["name"]] = d["spec"]["jobTemplate"]["spec"]["template"]
        elif d["kind"] == "Pod":
            specs[d["metadata"]["name"]] = {"metadata": d["metadata"], "spec": d["spec"]}
    return specs


@pytest.mark.parametrize("binary", HELMS)
def test_lint_strict(binary):
    done = helm(binary, "lint", "--strict", str(CHART), check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("binary", HELMS)
@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_renders_and_validates(binary, profile, tmp_path):
    out = tmp_path / "manifests.yaml"
    out.write_text(render(profile, binary))
    kinds = {d["kind"] for d in yaml.safe_load_all(out.read_text()) if d}
    assert "Deployment" in kinds or "StatefulSet" in kinds
    for version in KUBE_VERSIONS:
        done = subprocess.run(
            [
                str(Path(sys.prefix) / "bin" / "kubernetes-validate"),
                "-k",
                version,
                "--strict",
                "--quiet",
                str(out),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        problems = [
            line
            for line in (done.stdout + done.stderr).splitlines()
            if line.strip() and not any(f"kind {k} " in line for k in CRD_KINDS)
        ]
        assert done.returncode == 0 and not problems, "\n".join(problems)


def test_helm3_and_helm4_render_the_same():
    for profile in PROFILES:
        strip = [d for d in yaml.safe_load_all(render(profile, "helm3")) if d]
        four = [d for d in yaml.safe_load_all(render(profile, "helm4")) if d]
        # Generated passwords differ per render (and so their digests in the pods'
        # annotations); compare everything else.
        for docs in (strip, four):
            for d in docs:
                if d["kind"] == "Secret":  # generated passwords and keys: their names only
                    for field in ("stringData", "data"):
                        if field in d:
                            d[field] = sorted(d[field])
                template = d.get("spec", {}).get("template", {})
                template.get("metadata", {}).get("annotations", {}).pop("checksum/secrets", 0)
        assert strip == four, profile


def test_values_schema_rejects_nonsense():
    for bad in (
        "legacy.slots=0",
        "orderRedis.orderWrite=maybe",
        "redis.appendfsync=sometimes",
        "load.target=everything",
        "writer.batch=5000",
        "unknownKey=1",
    ):
        done = helm("helm4", "template", "x", str(CHART), "--set", bad, check=False)
        assert done.returncode != 0, bad
        assert "values don't meet the specifications" in done.stderr or "schema" in done.stderr


def test_hotdeal_pods_are_hardened():
    for profile in PROFILES:
        for name, tpl in pod_specs(objects(profile)).items():
            spec = tpl["spec"]
            assert spec["securityContext"]["runAsNonRoot"] is True, name
            assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
            for c in spec["containers"]:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
                assert sc["capabilities"]["drop"] == ["ALL"], (name, c["name"])
                if not name.endswith("-oracle"):  # Oracle XE writes all over its root fs
                    assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])


# Least privilege: the stores each pod's processes use (init-db uses the database).
USES = {
    "ev-hotdeal-legacy": {"database"},
    "ev-hotdeal-order-redis": {"redis"},
    "ev-hotdeal-writer": {"database", "redis"},
    "ev-hotdeal-reset": {"database", "redis"},
    "ev-hotdeal-reconcile": {"database", "redis"},
    "ev-hotdeal-event": {"database", "redis"},
    "ev-hotdeal-room": {"redis"},
}
SECRET = {"database": "ev-hotdeal-database", "redis": "ev-hotdeal-redis"}
# The stores' own pods: the Secret with their password, nothing else.
STORE_PODS = {"ev-hotdeal-redis": "redis", "ev-hotdeal-oracle": "database"}
URL_FILE = {
    "database": ("HOTDEAL_DATABASE_URL_FILE", "/var/run/secrets/hotdeal/database/database-url"),
    "redis": ("HOTDEAL_REDIS_URL_FILE", "/var/run/secrets/hotdeal/redis/redis-url"),
}
LABEL = {"database": "hotdeal.dev/database-client", "redis": "hotdeal.dev/redis-client"}


def _stores_of(template: dict) -> dict[str, set[str]]:
    """What a pod template can reach: its Secrets, URL variables and NetworkPolicy labels."""
    pod = template["spec"]
    containers = pod.get("initContainers", []) + pod["containers"]
    env = {e["name"] for c in containers for e in c.get("env", [])}
    secrets = {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    secrets |= {
        e["valueFrom"]["secretKeyRef"]["name"]
        for c in containers
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    return {
        "secrets": {k for k, name in SECRET.items() if name in secrets},
        "urls": {k for k, (var, _) in URL_FILE.items() if var in env},
        "labels": {k for k, label in LABEL.items() if label in template["metadata"]["labels"]},
    }


@pytest.mark.parametrize(
    ("profile", "overrides"),
    [
        ("load", {}),
        ("legacy-only", {}),
        ("inline", {"ev-hotdeal-order-redis": {"database", "redis"}}),
    ],
)
def test_each_pod_gets_only_the_stores_it_uses(profile, overrides):
    """Every pod used to get both Secrets and both NetworkPolicy labels: a legacy pod
    could read the Redis password and reach Redis. Order-redis needs the database only
    in inline mode; its init-db container is the only part that does then."""
    uses = {**USES, **overrides}
    specs = pod_specs(objects(profile))
    assert set(uses) & set(specs)
    # Every pod the chart renders, not only the hotdeal processes: the load generators
    # and the helm test get no store; Redis and Oracle get their own password only.
    for name, template in specs.items():
        reach = _stores_of(template)
        if name in STORE_PODS:
            wanted = {"secrets": {STORE_PODS[name]}, "urls": set(), "labels": set()}
        else:
            used = uses.get(name, set())
            wanted = {"secrets": used, "urls": used, "labels": used}
        assert reach == wanted, name
        # Only the event runner talks to the Kubernetes API.
        token = template["spec"].get("automountServiceAccountToken")
        assert token is (name == "ev-hotdeal-event"), name
        for c in template["spec"].get("initContainers", []):
            # init-db needs the database; the load jobs' token minter no store at all.
            assert {e["name"] for e in c["env"] if e["name"].endswith("_URL_FILE")} == (
                {"HOTDEAL_DATABASE_URL_FILE"} if c["name"] == "init-db" else set()
            ), name


def test_services_get_secrets_as_files_and_probes():
    docs = objects("default")
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == {"ev-hotdeal-legacy", "ev-hotdeal-order-redis", "ev-hotdeal-writer"}
    for name, d in deployments.items():
        pod = d["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        for store in USES[name]:
            var, path = URL_FILE[store]
            assert env[var] == path, name
        assert "HOTDEAL_DATABASE_URL" not in env and "HOTDEAL_REDIS_URL" not in env
        assert pod["automountServiceAccountToken"] is False
        if name != "ev-hotdeal-writer":
            c = pod["containers"][0]
            assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
            assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
            assert c["startupProbe"]["httpGet"]["port"] == "admin"  # not behind orders
    # No password in clear anywhere but the Secrets themselves.
    for d in docs:
        if d["kind"] != "Secret":
            assert "redis://:" not in json.dumps(d) and "oracle+oracledb://" not in json.dumps(d)


def test_generated_secrets_and_urls():
    secrets = by_kind(objects("default"), "Secret")
    db = secrets["ev-hotdeal-database"]["stringData"]
    assert set(db) == {"oracle-password", "app-password", "database-url"}
    assert db["database-url"] == (
        f"oracle+oracledb://hotdeal:{db['app-password']}@ev-hotdeal-oracle:1521/"
        "?service_name=XEPDB1"
    )
    redis = secrets["ev-hotdeal-redis"]["stringData"]
    assert redis["redis-url"] == f"redis://:{redis['redis-password']}@ev-hotdeal-redis:6379/0"
    # Generated passwords survive `helm uninstall` (the volumes do, and were made with them).
    for name in ("ev-hotdeal-database", "ev-hotdeal-redis"):
        annotations = secrets[name]["metadata"]["annotations"]
        assert annotations["helm.sh/resource-policy"] == "keep"


def test_existing_secrets_replace_the_stores():
    docs = objects("external")
    # The stores' Secrets are the operator's; the room's signing secret is the chart's
    # own unless given too (test_existing_secrets_with_their_own_key_names).
    assert set(by_kind(docs, "Secret")) == {"ev-hotdeal-room"}
    assert not by_kind(docs, "StatefulSet")
    # No store of the chart's own to guard; the services' policies stay.
    assert set(by_kind(docs, "NetworkPolicy")) == {
        "ev-hotdeal-legacy",
        "ev-hotdeal-order-redis",
        "ev-hotdeal-writer",
    }
    for name, tpl in pod_specs(docs).items():
        secrets = {
            v["secret"]["secretName"] for v in tpl["spec"].get("volumes", []) if "secret" in v
        }
        assert secrets <= {"rds-oracle", "elasticache", "idp-key", "ev-hotdeal-room"}, name
    urls = by_kind(objects("external-urls"), "Secret")
    assert urls["ev-hotdeal-redis"]["stringData"] == {
        "redis-url": "rediss://:t@cache.example:6379/0"
    }


def test_existing_secrets_with_their_own_key_names(tmp_path):
    """Bitnami's existingSecret + key names: an operator's Secrets rarely use ours."""
    values = tmp_path / "values.yaml"
    keys_db = {"url": "dsn", "oraclePassword": "sys-pw", "appPassword": "app-pw"}
    values.write_text(
        yaml.safe_dump(
            {
                "database": {"existingSecret": "corp-db", "existingSecretKeys": keys_db},
                "redis": {
                    "existingSecret": "corp-redis",
                    "existingSecretKeys": {"url": "uri", "password": "pw"},
                },
                "auth": {
                    "existingSecret": "corp-idp",
                    "existingSecretKey": "jwt.pem",
                    "issuer": "https://id.corp",
                    "devKeys": {"enabled": False},
                },
                "orderRedis": {
                    "waitingRoom": {"existingSecret": "corp-room", "existingSecretKey": "hs"}
                },
            }
        )
    )
    out = helm("helm4", "template", "ev", str(CHART), "-f", str(values)).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert not by_kind(docs, "Secret")
    used = set()
    for template in pod_specs(docs).values():
        spec = template["spec"]
        for v in spec.get("volumes", []):
            if "secret" in v:
                used |= {(v["secret"]["secretName"], i["key"]) for i in v["secret"]["items"]}
        for c in spec.get("initContainers", []) + spec["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    used.add((ref["name"], ref["key"]))
    assert used == {
        ("corp-db", "dsn"),
        ("corp-db", "sys-pw"),
        ("corp-db", "app-pw"),
        ("corp-redis", "uri"),
        ("corp-redis", "pw"),
        ("corp-idp", "jwt.pem"),
        ("corp-room", "hs"),
    }


def test_external_store_without_url_or_secret_is_refused():
    done = helm("helm4", "template", "x", str(CHART), "--set", "redis.enabled=false", check=False)
    assert done.returncode != 0
    assert "redis.externalUrl or redis.existingSecret is required" in done.stderr


def test_redis_and_oracle_statefulsets():
    sts = by_kind(objects("default"), "StatefulSet")
    redis = sts["ev-hotdeal-redis"]["spec"]
    container = redis["template"]["spec"]["containers"][0]
    assert container["command"] == ["sh", "-c"]
    args = shlex.split(container["args"][0])
    assert args[:2] == ["exec", "redis-server"]
    assert args[args.index("--requirepass") + 1] == "$REDIS_PASSWORD"
    assert "--appendonly" in args and args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    # noeviction refuses writes when full; maxmemory below the limit keeps the OOM killer
    # away (80% of the container's memory limit, from the downward API).
    assert args[args.index("--maxmemory") + 1] == "$((MEMORY_LIMIT / 100 * 80))"
    env = {e["name"]: e for e in container["env"]}
    assert env["MEMORY_LIMIT"]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.memory"
    assert redis["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "2Gi"
    oracle = sts["ev-hotdeal-oracle"]["spec"]["template"]["spec"]["containers"][0]
    assert oracle["image"].startswith("docker.io/gvenzl/oracle-xe:")
    assert oracle["readinessProbe"]["exec"]["command"] == ["healthcheck.sh"]
    env = {e["name"]: e.get("value") for e in oracle["env"]}
    assert env["ORACLE_PASSWORD_FILE"].startswith("/var/run/secrets/oracle/")


def test_readiness_never_waits_for_a_helm_hook():
    """`helm install --wait` (and Argo CD, Flux) wait for Ready before post-install hooks
    run: the tables must come from an initContainer of each database client."""
    docs = objects("default")
    assert not [
        d
        for d in docs
        if "helm.sh/hook" in d["metadata"].get("annotations", {}) and d["kind"] != "Pod"
    ]  # the helm test pod is a hook by design
    deployments = by_kind(docs, "Deployment")
    for name in ("ev-hotdeal-legacy", "ev-hotdeal-writer"):
        init = deployments[name]["spec"]["template"]["spec"]["initContainers"][0]
        assert init["command"][:3] == ["hotdeal-ops", "init-db", "--wait"], name
    # order-redis in write-behind mode never touches the database.
    assert "initContainers" not in deployments["ev-hotdeal-order-redis"]["spec"]["template"]["spec"]


def _matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _admitted(rule: dict, pods: dict[str, dict]) -> set[str]:
    """The release's pods a rule's pod selectors admit (namespace selectors admit none
    of them: they name other namespaces)."""
    selectors = [
        peer["podSelector"]["matchLabels"] for peer in rule["from"] if "podSelector" in peer
    ]
    return {p for p, labels in pods.items() if any(_matches(s, labels) for s in selectors)}


def test_network_policies_admit_exactly_the_hotdeal_pods():
    docs = objects("load")
    policies = by_kind(docs, "NetworkPolicy")
    pods = {name: tpl["metadata"]["labels"] for name, tpl in pod_specs(docs).items()}
    stores = {"ev-hotdeal-redis": 6379, "ev-hotdeal-oracle": 1521}
    store_of = {"ev-hotdeal-redis": "redis", "ev-hotdeal-oracle": "database"}
    services = {
        "ev-hotdeal-legacy": 9000,
        "ev-hotdeal-order-redis": 9000,
        "ev-hotdeal-writer": 9102,
    }
    assert set(policies) == set(stores) | set(services)
    for name, policy in policies.items():
        spec = policy["spec"]
        assert _matches(spec["podSelector"]["matchLabels"], pods[name])  # guards its pods
        if name in stores:
            clients = {pod for pod, uses in USES.items() if store_of[name] in uses}
            (rule,) = spec["ingress"]
            assert rule["ports"] == [{"protocol": "TCP", "port": stores[name]}]
            assert _admitted(rule, pods) == clients, name  # load generators are not clients
            continue
        *orders, admin = spec["ingress"]
        # Probes and scrapes: the monitoring namespace and the helm test, nothing else here.
        assert admin["ports"] == [{"protocol": "TCP", "port": services[name]}]
        assert _admitted(admin, pods) == {"ev-hotdeal-helm-test"}, name
        assert {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
        } in admin["from"]
        if name == "ev-hotdeal-writer":
            assert orders == []  # no order port
        else:  # buyers arrive from anywhere unless orderFrom says where
            assert orders == [{"ports": [{"protocol": "TCP", "port": 8080}]}], name


def test_order_ports_admit_only_order_from_when_set(tmp_path):
    values = tmp_path / "v.yaml"
    ingress = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}
    }
    values.write_text(yaml.safe_dump({"networkPolicy": {"orderFrom": [ingress]}}))
    docs = [
        d
        for d in yaml.safe_load_all(
            helm("helm4", "template", "ev", str(CHART), "-f", str(values)).stdout
        )
        if d
    ]
    policy = by_kind(docs, "NetworkPolicy")["ev-hotdeal-order-redis"]
    assert policy["spec"]["ingress"][0] == {
        "ports": [{"protocol": "TCP", "port": 8080}],
        "from": [ingress],
    }


def test_ops_and_load_jobs_are_suspended_cronjobs():
    docs = objects("load")
    cron = by_kind(docs, "CronJob")
    assert set(cron) == {
        "ev-hotdeal-reset",
        "ev-hotdeal-reconcile",
        "ev-hotdeal-room",
        "ev-hotdeal-event",
        "ev-hotdeal-load-k6",
        "ev-hotdeal-load-ab",
    }
    assert all(c["spec"]["suspend"] is True for c in cron.values())
    ab = cron["ev-hotdeal-load-ab"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    # ab -c 150 -n 3000 as in the workshop, with its one buyer's token (sh reads it).
    sh, dash_c, line = ab["containers"][0]["command"]
    assert (sh, dash_c) == ("/bin/sh", "-c")
    words = shlex.split(line)
    assert words[:4] == [
        "exec",
        "/usr/local/apache2/bin/ab",
        "-H",
        "Authorization: Bearer $(head -n 1 /tokens/tokens.txt)",
    ]
    assert words[:1] + words[4:] == [
        "exec",
        "-l",
        "-r",
        "-c",
        "150",
        "-n",
        "3000",
        "http://ev-hotdeal-order-redis:80/order-redis",
    ]
    k6 = cron["ev-hotdeal-load-k6"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert k6["containers"][0]["args"] == ["run", "--no-usage-report", "/scripts/workshop.js"]
    scripts = by_kind(docs, "ConfigMap")["ev-hotdeal-load-k6"]["data"]
    assert set(scripts) == {"lib.js", "workshop.js", "spike.js"}
    assert scripts["workshop.js"] == (REPO / "k6" / "workshop.js").read_text().rstrip("\n")
    event = cron["ev-hotdeal-event"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert event["automountServiceAccountToken"] is True  # the only pod with an API token
    assert event["containers"][0]["args"][:3] == ["event", "--load-cronjob", "ev-hotdeal-load-k6"]
    reset = cron["ev-hotdeal-reset"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert reset["automountServiceAccountToken"] is False
    assert "TestRun" not in {d["kind"] for d in docs}  # on demand only: see the next test


def test_the_k6_testrun_is_rendered_on_demand_with_the_cronjobs_env(tmp_path):
    """The k6-operator starts a TestRun as soon as it exists: installed with the release
    it loaded the services before reset and the schema, and its runner lacked spike.js's
    RATE and DURATION. Now only `-s templates/load-testrun.yaml` with a runId renders
    it, with the k6 CronJob's variables."""
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"load": {"enabled": True, "k6": {"script": "spike.js"}}}))
    base = ["template", "ev", str(CHART), "-f", str(values)]
    for binary in HELMS:
        plain = helm(binary, *base).stdout
        assert "kind: TestRun" not in plain
        on_demand = helm(
            binary, *base, "-s", "templates/load-testrun.yaml", "--set", "load.k6.testRun.runId=42"
        ).stdout
        (run,) = [d for d in yaml.safe_load_all(on_demand) if d]
        assert run["kind"] == "TestRun" and run["metadata"]["name"] == "ev-hotdeal-load-k6-42"
        assert run["spec"]["script"]["configMap"] == {
            "name": "ev-hotdeal-load-k6",
            "file": "spike.js",
        }
        cron = by_kind([d for d in yaml.safe_load_all(plain) if d], "CronJob")["ev-hotdeal-load-k6"]
        k6 = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        assert run["spec"]["runner"]["env"] == k6["env"]
        assert {e["name"] for e in k6["env"]} >= {"RATE", "DURATION", "BASE_URL", "VUS"}
        assert run["spec"]["runner"]["image"] == k6["image"]


def test_the_k6_operators_pods_pass_restricted_and_use_the_mirror(tmp_path):
    """The TestRun set no securityContext for runner, initializer or starter (refused in
    the `restricted` namespace the README recommends), and its starter image bypassed
    global.imageRegistry and the pull secrets."""
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "load": {"enabled": True, "k6": {"testRun": {"runId": "7"}}},
                "global": {"imageRegistry": "mirror.example.com", "imagePullSecrets": ["m"]},
            }
        )
    )
    out = helm("helm4", "template", "ev", str(CHART), "-f", str(values), "-s",
               "templates/load-testrun.yaml").stdout  # fmt: skip
    (run,) = [d for d in yaml.safe_load_all(out) if d]
    for part in ("initializer", "starter", "runner"):
        spec = run["spec"][part]
        assert spec["image"].startswith("mirror.example.com/"), part
        assert spec["imagePullSecrets"] == [{"name": "m"}], part
        pod, container = spec["securityContext"], spec["containerSecurityContext"]
        assert pod["runAsNonRoot"] and pod["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["allowPrivilegeEscalation"] is False
        assert container["capabilities"] == {"drop": ["ALL"]}


def test_monitoring_objects_use_the_shared_files():
    docs = objects("monitoring")
    rule = by_kind(docs, "PrometheusRule")["ev-hotdeal"]
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    dash = by_kind(docs, "ConfigMap")["ev-hotdeal-dashboard"]
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dash["data"]["hotdeal.json"])["uid"] == "hotdeal-event"
    monitors = by_kind(docs, "ServiceMonitor")
    services = by_kind(docs, "Service")
    for name, sm in monitors.items():
        assert sm["spec"]["endpoints"][0]["relabelings"][0]["replacement"] == (
            "hotdeal-" + name.removeprefix("ev-hotdeal-")
        )
        svc = services[name]
        assert _matches(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
        assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}


def test_profiles_switch_parts_off():
    assert set(by_kind(objects("legacy-only"), "Deployment")) == {"ev-hotdeal-legacy"}
    legacy = by_kind(objects("legacy-only"), "Deployment")["ev-hotdeal-legacy"]
    env = {
        e["name"]: e.get("value")
        for e in legacy["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["HOTDEAL_LEGACY_SLOTS"] == "8"
    assert "ev-hotdeal-legacy" not in by_kind(objects("redis-only"), "Deployment")
    hpa = by_kind(objects("load"), "HorizontalPodAutoscaler")["ev-hotdeal-order-redis"]
    assert (
        "replicas" not in by_kind(objects("load"), "Deployment")["ev-hotdeal-order-redis"]["spec"]
    )
    assert hpa["spec"]["maxReplicas"] == 10


def test_helm_test_hook_checks_readiness():
    pod = by_kind(objects("default"), "Pod")["ev-hotdeal-helm-test"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    # /readyz is served on the admin port only (never behind orders in the workers).
    assert pod["spec"]["containers"][0]["args"] == [
        "http://ev-hotdeal-legacy:9000/readyz",
        "http://ev-hotdeal-order-redis:9000/readyz",
    ]
    assert pod["metadata"]["labels"]["hotdeal.dev/admin-client"] == "true"


def test_notes_tell_how_to_run_the_event():
    values = SCRATCH / "load.yaml"
    values.write_text(yaml.safe_dump(PROFILES["load"]))
    done = helm(
        "helm4", "install", "ev", str(CHART), "--dry-run=client", "-n", "games", "-f", str(values)
    )
    notes = done.stdout.split("NOTES:")[1]
    assert "kubectl -n games create job --from=cronjob/ev-hotdeal-reset" in notes
    assert "--from=cronjob/ev-hotdeal-load-ab" in notes
    assert "--from=cronjob/ev-hotdeal-event" in notes


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_no_disruption_budget_blocks_a_node_drain(profile):
    """A PDB that keeps every replica (minAvailable = replicas) makes `kubectl drain` and
    managed node-group upgrades hang: every budget must allow one eviction."""
    docs = objects(profile)
    workloads = {**by_kind(docs, "Deployment"), **by_kind(docs, "StatefulSet")}
    for name, pdb in by_kind(docs, "PodDisruptionBudget").items():
        spec = pdb["spec"]
        assert "minAvailable" not in spec or spec["minAvailable"] < workloads[name]["spec"].get(
            "replicas", 1
        ), name
        assert spec.get("maxUnavailable", 1) not in (0, "0%"), name


def test_redis_is_ready_only_when_it_answers_pong():
    """`redis-cli ping` exits 0 on LOADING or NOAUTH: the probe must compare the reply."""
    redis_set = next(
        d
        for d in objects("default")
        if d["kind"] == "StatefulSet" and "redis" in d["metadata"]["name"]
    )
    pod = redis_set["spec"]["template"]["spec"]
    probe = pod["containers"][0]["readinessProbe"]["exec"]["command"]
    assert probe[:2] == ["sh", "-c"] and "= PONG" in probe[2]
    assert pod["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"


def test_a_private_mirror_reaches_every_pod(tmp_path):
    """Behind a mirror, every image (the third-party ones too) comes from it and every
    pod carries the pull secrets: Oracle, Redis, exporter, k6, ab and the helm test
    once got ImagePullBackOff."""
    values = {
        "global": {"imageRegistry": "mirror.example.com", "imagePullSecrets": ["mirror"]},
        "redis": {"exporter": {"enabled": True}},
        "load": {"enabled": True},
    }
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    out = helm("helm4", "template", "ev", str(CHART), "-f", str(path)).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    specs = pod_specs(docs)
    assert specs
    for name, template in specs.items():
        spec = template["spec"]
        assert {"name": "mirror"} in spec.get("imagePullSecrets", []), name
        for c in spec.get("initContainers", []) + spec["containers"]:
            assert c["image"].startswith("mirror.example.com/"), (name, c["image"])
    images = {c["image"] for t in specs.values() for c in t["spec"]["containers"]}
    assert "mirror.example.com/gvenzl/oracle-xe:21-slim" in images
    assert "mirror.example.com/library/redis:8.2-bookworm" in images


def test_service_monitors_keep_the_apps_labels(tmp_path):
    """prometheus-operator sets the target label `service` to the Kubernetes Service
    name; without honorLabels the app's `service` label became `exported_service` and
    `hotdeal_stock_initial{service="order-redis"}` (the oversell alert) matched nothing."""
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({"monitoring": {"serviceMonitor": {"enabled": True}}}))
    out = helm("helm4", "template", "ev", str(CHART), "-f", str(path)).stdout
    monitors = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "ServiceMonitor"]
    assert monitors
    for monitor in monitors:
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["honorLabels"] is True, monitor["metadata"]["name"]


def test_oracle_starts_on_a_fresh_volume_on_an_x86_node():
    """A -faststart image keeps its datafiles in /opt/oracle/oradata, which the volume
    mounted there hides: the pod crash-looped (ORA-00205). XE is x86_64 only."""
    oracle = by_kind(objects("default"), "StatefulSet")["ev-hotdeal-oracle"]
    pod = oracle["spec"]["template"]["spec"]
    container = pod["containers"][0]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/opt/oracle/oradata" in mounts
    assert "faststart" not in container["image"]
    assert pod["nodeSelector"] == {"kubernetes.io/arch": "amd64"}


def test_statefulsets_are_governed_by_headless_services():
    docs = objects("default")
    services = by_kind(docs, "Service")
    for name, sts in by_kind(docs, "StatefulSet").items():
        governing = services[sts["spec"]["serviceName"]]
        assert governing["spec"]["clusterIP"] == "None", name


@pytest.mark.parametrize("binary", HELMS)
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"writer": {"enabled": False}}, "needs writer.enabled=true"),
        ({"orderRedis": {"durability": "replica"}}, "needs a replicated Redis"),
        ({"redis": {"enabled": False}}, "redis.externalUrl or redis.existingSecret is required"),
        (
            {"legacy": {"enabled": False}, "load": {"enabled": True, "target": "legacy"}},
            "load.target=legacy",
        ),
        ({"load": {"k6": {"testRun": {"runId": "1"}}}}, "runId needs load.enabled=true"),
        ({"redis": {"clusterMode": True}}, "redis.clusterMode=true is for an external"),
        ({"redis": {"appendfsync": "everysec"}}, "needs redis.appendfsync=always"),
    ],
)
def test_contradictory_values_fail_with_a_message(binary, tmp_path, values, message):
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    done = helm(binary, "template", "ev", str(CHART), "-f", str(path), check=False)
    assert done.returncode != 0
    assert message in done.stderr


def test_the_default_durability_gets_the_redis_it_needs():
    """fsync needs appendfsync always on every Redis version: the chart's own Redis
    (8.2, where everysec would make WAITAOF wait for the once-a-second fsync) gets it."""
    docs = [d for d in yaml.safe_load_all(helm("helm4", "template", "ev", str(CHART)).stdout) if d]
    redis_sts = next(
        d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"].endswith("-redis")
    )
    args = " ".join(
        " ".join(c.get("args", []) + c.get("command", []))
        for c in redis_sts["spec"]["template"]["spec"]["containers"]
    )
    assert "--appendfsync always" in args
    order_redis = next(
        d
        for d in docs
        if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-order-redis")
    )
    env = {
        e["name"]: e.get("value")
        for e in order_redis["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["HOTDEAL_REDIS_DURABILITY"] == "fsync"


def test_common_labels_reach_every_object(tmp_path):
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({"commonLabels": {"team": "shop"}, "load": {"enabled": True}}))
    out = helm("helm4", "template", "ev", str(CHART), "-f", str(path)).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert docs
    for d in docs:
        assert d["metadata"]["labels"].get("team") == "shop", (d["kind"], d["metadata"]["name"])


ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def _restricted_violations(template: dict) -> list[str]:
    """The Pod Security Standard `restricted` (v1.33), as the admission plugin checks it."""
    pod = template["spec"]
    psc = pod.get("securityContext", {})
    problems = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            problems.append(key)
    for v in pod.get("volumes", []):
        if not set(v) - {"name"} <= ALLOWED_VOLUMES:
            problems.append(f"volume {v['name']}")
    if psc.get("runAsUser") == 0:
        problems.append("pod runAsUser 0")
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c.get("securityContext", {})
        where = c["name"]
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []) or set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where}: capabilities")
        if not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
            problems.append(f"{where}: runAsNonRoot")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            problems.append(f"{where}: runAsUser 0")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccompProfile")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            problems.append(f"{where}: hostPort")
    return problems


@pytest.mark.parametrize("profile", ["load", "monitoring", "inline"])
def test_every_pod_passes_the_restricted_pod_security_standard(profile):
    """The README tells operators to enforce `restricted` on the namespace (it bounds what
    the event runner's `jobs: create` can start): every pod the chart makes must pass."""
    specs = pod_specs(objects(profile))
    bad = {name: v for name, t in specs.items() if (v := _restricted_violations(t))}
    assert not bad, bad


def _values_schema(*args: str) -> subprocess.CompletedProcess:
    script = REPO / "scripts" / "values_schema.py"
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, check=False
    )


def test_every_value_has_an_at_param_and_the_schema_carries_it():
    """Bitnami's `## @param` lines document every value; values.schema.json holds the
    same descriptions and the values' defaults (scripts/values_schema.py writes them)."""
    done = _values_schema("--check")
    assert done.returncode == 0, done.stderr
    schema = json.loads((CHART / "values.schema.json").read_text())
    redis = schema["properties"]["orderRedis"]["properties"]["durability"]
    assert redis["default"] == "fsync" and "201" in redis["description"]


def test_an_undocumented_or_stale_value_fails_the_check(tmp_path):
    chart = tmp_path / "chart"
    chart.mkdir()
    schema = (CHART / "values.schema.json").read_text()
    (chart / "values.schema.json").write_text(schema)
    text = (CHART / "values.yaml").read_text()
    (chart / "values.yaml").write_text(
        "\n".join(line for line in text.splitlines() if "@param writer.batch " not in line)
    )
    done = _values_schema("--check", "--chart", str(chart))
    assert done.returncode == 1 and "writer.batch: no @param line" in done.stderr
    (chart / "values.yaml").write_text(text.replace("batch: 500", "batch: 600"))
    done = _values_schema("--check", "--chart", str(chart))
    assert done.returncode == 1 and "not up to date" in done.stderr


def test_cluster_mode_reaches_every_redis_client():
    """ElastiCache cluster mode: every process that talks to Redis uses the cluster
    client (the take script would fail with MOVED on a plain one), no other does."""
    for name, template in pod_specs(objects("elasticache-cluster")).items():
        for c in template["spec"].get("initContainers", []) + template["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            uses_redis = "HOTDEAL_REDIS_URL_FILE" in env
            assert (env.get("HOTDEAL_REDIS_CLUSTER") == "true") == uses_redis, (name, c["name"])


def test_the_order_models_settings_reach_every_process_that_touches_it(tmp_path):
    """The Idempotency-Key TTL and the durability: the service takes with them, the writer
    (and `hotdeal-ops repair`, run in its pod) rebuild with them; the writer's rebuilds
    once restored keys with the 86,400 s default."""
    values = tmp_path / "model.yaml"
    model = {"idempotencyTtlSeconds": 3600, "durability": "none", "durabilityTimeoutMs": 700}
    values.write_text(yaml.safe_dump({"orderRedis": model}))
    done = helm("helm4", "template", "ev", str(CHART), "-n", "games", "-f", str(values))
    expected = {
        "HOTDEAL_IDEMPOTENCY_TTL_S": "3600",
        "HOTDEAL_REDIS_DURABILITY": "none",
        "HOTDEAL_REDIS_DURABILITY_TIMEOUT_MS": "700",
    }
    touching = set()
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    for name, template in pod_specs(docs).items():
        for c in template["spec"].get("initContainers", []) + template["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            if "HOTDEAL_REDIS_URL_FILE" in env:
                touching.add(name)
                assert {k: env.get(k) for k in expected} == expected, (name, c["name"])
    assert {"ev-hotdeal-order-redis", "ev-hotdeal-writer"} <= touching, touching
    assert {"ev-hotdeal-reset", "ev-hotdeal-reconcile"} <= touching, touching


def test_scaling_rolls_no_pod_and_a_new_password_rolls_its_readers(tmp_path):
    """Before, the pod checksum hashed the whole component block: `--set
    orderRedis.replicas=6` mid-event restarted every order-redis pod."""

    def templates(*sets: str) -> dict[str, dict]:
        args = ["template", "ev", str(CHART)]
        for s in sets:
            args += ["--set", s]
        # A mounted IdP key: the dev key pair is generated anew by each `helm template`.
        args += ["--set", "auth.existingSecret=idp", "--set", "auth.issuer=https://id"]
        args += ["--set", "orderRedis.waitingRoom.existingSecret=room"]  # likewise the room's
        docs = [d for d in yaml.safe_load_all(helm("helm4", *args, identity=False).stdout) if d]
        return {
            d["metadata"]["name"]: d["spec"]["template"]
            for d in docs
            if d["kind"] in ("Deployment", "StatefulSet")
        }

    base = templates("database.existingSecret=db", "redis.existingSecret=rs")
    scaled = templates(
        "database.existingSecret=db",
        "redis.existingSecret=rs",
        "orderRedis.replicas=6",
        "legacy.replicas=4",
        "writer.replicas=3",
    )
    assert scaled == base


def test_buyers_reach_the_front_which_runs_the_text_make_up_runs(tmp_path):
    """Slow clients: the Service's http port is the front's (nginx), gunicorn listens on
    loopback behind it, and the ConfigMap is files/front.conf as `make up` renders it."""
    from hotdeal_local.front import READ_TIMEOUT_S, nginx_binary
    from hotdeal_local.front import render as render_front

    docs = objects("default")
    confs = by_kind(docs, "ConfigMap")["ev-hotdeal-front"]["data"]
    for service, seconds in READ_TIMEOUT_S.items():
        wanted = render_front("8080", "127.0.0.1:8081", "/tmp", seconds)
        assert confs[f"{service}.conf"].rstrip() == wanted.rstrip()
    conf = confs["order-redis.conf"]
    for name in ("ev-hotdeal-legacy", "ev-hotdeal-order-redis"):
        pod = pod_specs(docs)[name]
        app, front = pod["spec"]["containers"]
        assert f"/etc/hotdeal/{name.removeprefix('ev-hotdeal-')}.conf" in front["command"]
        assert front["name"] == "front" and "nginx-unprivileged" in front["image"]
        assert front["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
        assert {p["name"] for p in app["ports"]} == {"admin"}
        env = {e["name"]: e.get("value") for e in app["env"]}
        assert env["HOTDEAL_BIND"] == "127.0.0.1:8081"
        assert pod["metadata"]["annotations"]["checksum/front"]
        service = by_kind(docs, "Service")[name]
        assert {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"} in service[
            "spec"
        ]["ports"]
    # nginx itself accepts the chart's text (the pid and temp paths under the emptyDir).
    (tmp_path / "front.conf").write_text(conf.replace("/tmp", str(tmp_path)))
    done = subprocess.run(
        [
            nginx_binary(),
            "-t",
            "-p",
            str(tmp_path),
            "-c",
            str(tmp_path / "front.conf"),
            "-e",
            "stderr",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_without_the_front_gunicorn_takes_the_http_port(tmp_path):
    values = tmp_path / "v.yaml"
    values.write_text(yaml.safe_dump({"front": {"enabled": False}}))
    docs = [
        d
        for d in yaml.safe_load_all(
            helm("helm4", "template", "ev", str(CHART), "-f", str(values)).stdout
        )
        if d
    ]
    assert "ev-hotdeal-front" not in by_kind(docs, "ConfigMap")
    (app,) = pod_specs(docs)["ev-hotdeal-order-redis"]["spec"]["containers"]
    assert {p["name"] for p in app["ports"]} == {"http", "admin"}
    assert "HOTDEAL_BIND" not in {e["name"] for e in app["env"]}


RELEASED = CHART.parent / "released"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("-")[0].split("."))


def _immutable(docs: list[dict]) -> dict[tuple[str, str], object]:
    """What `helm upgrade` can't change on a live object: a StatefulSet's selector,
    serviceName, podManagementPolicy and volumeClaimTemplates (size and class included),
    a Deployment's selector, whether a Service is headless."""
    fields: dict[tuple[str, str], object] = {}
    for d in docs:
        key, spec = (d["kind"], d["metadata"]["name"]), d.get("spec", {})
        if d["kind"] == "StatefulSet":
            fields[key] = {
                "selector": spec["selector"],
                "serviceName": spec["serviceName"],
                "podManagementPolicy": spec.get("podManagementPolicy", "OrderedReady"),
                "volumeClaimTemplates": [
                    {"name": t["metadata"]["name"], **t["spec"]}
                    for t in spec.get("volumeClaimTemplates", [])
                ],
            }
        elif d["kind"] == "Deployment":
            fields[key] = spec["selector"]
        elif d["kind"] == "Service":
            fields[key] = spec.get("clusterIP") == "None"
    return fields


def _render_chart(chart: Path, values: dict, tmp_path: Path) -> list[dict]:
    if chart != CHART:  # 0.1.0 had no buyer identity (its schema refuses the section)
        values = {k: v for k, v in values.items() if k not in ("auth", "workshopRoutes")}
    path = tmp_path / "upgrade-values.yaml"
    path.write_text(yaml.safe_dump(values))
    out = helm("helm4", "template", "ev", str(chart), "-n", "games", "-f", str(path)).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_the_chart_is_a_new_version_of_the_last_released_one():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    released = [_version(p.stem.removeprefix("hotdeal-")) for p in RELEASED.glob("hotdeal-*.tgz")]
    assert released and _version(chart["version"]) > max(released)
    project = (REPO / "pyproject.toml").read_text()
    assert f'version = "{chart["appVersion"]}"' in project  # the images' default tag


# Values both the released chart and this one accept.
UPGRADE_PROFILES = ["default", "external", "legacy-only", "redis-only", "inline", "monitoring"]


@pytest.mark.parametrize("profile", UPGRADE_PROFILES)
def test_upgrading_from_the_last_released_chart_changes_no_immutable_field(profile, tmp_path):
    """`helm upgrade` from the newest chart in charts/released must not be rejected (a
    changed serviceName was, with the version unchanged); a change that must happen
    bumps the version and documents the way across (README "Upgrades")."""
    last = max(RELEASED.glob("hotdeal-*.tgz"), key=lambda p: _version(p.stem.split("-", 1)[1]))
    before = _immutable(_render_chart(last, PROFILES[profile], tmp_path))
    after = _immutable(_render_chart(CHART, PROFILES[profile], tmp_path))
    changed = {
        k: (before[k], after[k]) for k in before.keys() & after.keys() if before[k] != after[k]
    }
    assert not changed, changed


def test_the_upgrade_check_sees_a_changed_volume(tmp_path):
    base = _immutable(_render_chart(CHART, {}, tmp_path))
    bigger = _immutable(_render_chart(CHART, {"redis": {"persistence": {"size": "5Gi"}}}, tmp_path))
    assert base[("StatefulSet", "ev-hotdeal-redis")] != bigger[("StatefulSet", "ev-hotdeal-redis")]


def test_reset_prepares_the_rows_legacy_uses():
    """ops.slots once told reset how many rows to make while legacy.slots told legacy how
    many to use: one setting now, the one legacy reads."""
    for profile, slots in (("default", "1"), ("legacy-only", "8")):
        specs = pod_specs(objects(profile))
        (ops_container,) = specs["ev-hotdeal-reset"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in ops_container["env"]}
        assert env["HOTDEAL_LEGACY_SLOTS"] == slots
        assert "--slots" not in ops_container["args"]
        legacy = specs["ev-hotdeal-legacy"]["spec"]["containers"][0]
        assert {"name": "HOTDEAL_LEGACY_SLOTS", "value": slots} in legacy["env"]


def test_checksum_annotations_are_strings_whatever_the_digest():
    """A digest of only digits (the generated passwords change it every render) was an
    integer to YAML, and the API server refuses a non-string annotation: a random
    validation failure found by CI."""
    for profile in PROFILES:
        for name, tpl in pod_specs(objects(profile)).items():
            for key, value in tpl["metadata"].get("annotations", {}).items():
                if key.startswith("checksum/"):
                    assert isinstance(value, str), (profile, name, key)
    for path in ("templates/_workload.tpl", "templates/redis.yaml"):
        for line in (CHART / path).read_text().splitlines():
            if "checksum/" in line and "{{" in line:
                assert "| quote }}" in line, line


# -- buyer identity -----------------------------------------------------------------


def _template(*sets: str, identity: bool = False) -> subprocess.CompletedProcess:
    args = ["template", "ev", str(CHART), "-n", "games"]
    for s in sets:
        args += ["--set", s]
    return helm("helm4", *args, check=False, identity=identity)


def test_buyer_identity_needs_a_key_source():
    done = _template()
    assert done.returncode != 0
    assert "auth.mode=jwt needs exactly one key source" in done.stderr
    assert "auth.mode=jwt needs auth.issuer" in done.stderr
    two = _template("auth.jwksUrl=https://id.example/jwks", "auth.existingSecret=idp")
    assert "exactly one key source" in two.stderr
    load = _template("auth.jwksUrl=https://id/j", "auth.issuer=https://id", "load.enabled=true")
    assert "needs auth.devKeys.enabled=true" in load.stderr
    routes = _template("auth.devKeys.enabled=true", "load.enabled=true")
    assert "set workshopRoutes=true" in routes.stderr
    assert _template("auth.mode=off").returncode == 0  # the workshop's trust, on request
    leeway = _template("auth.devKeys.enabled=true", "auth.leewaySeconds=301")
    assert leeway.returncode != 0


def _services(docs: list[dict]) -> dict[str, dict]:
    deployments = by_kind(docs, "Deployment")
    return {
        n: deployments[n]["spec"]["template"]["spec"]
        for n in ("ev-hotdeal-legacy", "ev-hotdeal-order-redis")
    }


def test_a_jwks_url_is_what_the_services_verify_with():
    done = _template(
        "auth.jwksUrl=https://id.example/.well-known/jwks.json", "auth.issuer=https://id.example"
    )
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    for spec in _services(docs).values():
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        assert env["HOTDEAL_AUTH_JWKS_URL"] == "https://id.example/.well-known/jwks.json"
        assert env["HOTDEAL_AUTH_ISSUER"] == "https://id.example"
        assert env["HOTDEAL_WORKSHOP_ROUTES"] == "false"  # off unless asked for
        assert "HOTDEAL_AUTH_PUBLIC_KEY_FILE" not in env
        assert "auth-key" not in {v["name"] for v in spec["volumes"]}
    assert not [d for d in docs if d["metadata"]["name"] == "ev-hotdeal-auth-dev"]


def test_a_mounted_public_key_reaches_only_the_order_services():
    done = _template("auth.existingSecret=idp-key", "auth.issuer=https://id.example")
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    for spec in _services(docs).values():
        (volume,) = [v for v in spec["volumes"] if v["name"] == "auth-key"]
        assert volume["secret"] == {
            "secretName": "idp-key",
            "items": [{"key": "public-key.pem", "path": "public-key.pem"}],
        }
        app, *others = spec["containers"]
        assert "auth-key" in {m["name"] for m in app["volumeMounts"]}
        assert all("auth-key" not in {m["name"] for m in c.get("volumeMounts", [])} for c in others)
    for name, pod in pod_specs(docs).items():
        if name not in _services(docs):
            assert "auth-key" not in {v["name"] for v in pod["spec"].get("volumes", [])}, name


def test_the_dev_key_signs_only_in_the_load_jobs_and_verifies_in_the_services():
    """skaffold dev: the chart's own key pair. The services mount the certificate, only
    the load jobs the private key, and a token its key signs verifies with its
    certificate (the same code as the pods: hotdeal-ops token, hotdeal.identity)."""
    done = _template("auth.devKeys.enabled=true", "workshopRoutes=true", "load.enabled=true")
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    (secret,) = [d for d in docs if d["metadata"]["name"] == "ev-hotdeal-auth-dev"]
    assert secret["type"] == "kubernetes.io/tls"
    readers = {}
    for name, pod in pod_specs(docs).items():
        for v in pod["spec"].get("volumes", []):
            if v.get("secret", {}).get("secretName") == "ev-hotdeal-auth-dev":
                readers[name] = {i["key"] for i in v["secret"]["items"]}
    assert readers == {
        "ev-hotdeal-legacy": {"tls.crt"},
        "ev-hotdeal-order-redis": {"tls.crt"},
        "ev-hotdeal-load-k6": {"tls.key"},
        "ev-hotdeal-load-ab": {"tls.key"},
    }
    specs = pod_specs(docs)
    k6 = specs["ev-hotdeal-load-k6"]["spec"]
    assert k6["initContainers"][0]["command"][-1].startswith("hotdeal-ops token --users 10000")
    assert {"name": "TOKENS_FILE", "value": "/tokens/tokens.txt"} in k6["containers"][0]["env"]
    ab = specs["ev-hotdeal-load-ab"]["spec"]["containers"][0]
    assert "Authorization: Bearer $(head -n 1 /tokens/tokens.txt)" in ab["command"][-1]

    from hotdeal.config import Settings
    from hotdeal.identity import verifier_from_settings
    from hotdeal_ops.tokens import Signer, load_signing_key

    key = base64.b64decode(secret["data"]["tls.key"]).decode()
    cert = base64.b64decode(secret["data"]["tls.crt"]).decode()
    token = Signer(load_signing_key(key), "hotdeal-dev", "hotdeal").token("load-7")
    verifier = verifier_from_settings(
        Settings(auth_issuer="hotdeal-dev", auth_audience="hotdeal", auth_public_key=cert), "t"
    )
    assert verifier.caller(f"Bearer {token}").subject == "load-7"


def test_the_testrun_runners_mint_their_tokens_too():
    done = _template(
        "auth.devKeys.enabled=true", "workshopRoutes=true", "load.enabled=true",
        "load.k6.testRun.runId=9",
    )  # fmt: skip
    (testrun,) = [d for d in yaml.safe_load_all(done.stdout) if d and d["kind"] == "TestRun"]
    runner = testrun["spec"]["runner"]
    # Only the fields of the operator's InitContainer (it copies the runner's pull
    # policy and security context; a strict create refuses unknown fields).
    (init,) = runner["initContainers"]
    assert init["name"] == "tokens"
    assert set(init) <= {
        "args", "command", "env", "envFrom", "image", "name", "resources",
        "restartPolicy", "volumeMounts", "workingDir",
    }  # fmt: skip
    assert {"name": "TOKENS_FILE", "value": "/tokens/tokens.txt"} in runner["env"]


def test_every_order_redis_pod_signs_the_room_with_one_secret_kept_across_upgrades():
    """Tickets from one pod are polled on another: one Secret, mounted by each pod, long
    enough for HS256 (hotdeal.room), and made once (lookup keeps it on upgrade)."""
    from hotdeal.room import Signer

    docs = objects("default")
    made = by_kind(docs, "Secret")["ev-hotdeal-room"]["stringData"]["room-secret"]
    Signer(made)  # refuses fewer than 32 bytes
    pod = pod_specs(docs)["ev-hotdeal-order-redis"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "order-redis"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    path = env["HOTDEAL_ROOM_SECRET_FILE"]
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"])]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "ev-hotdeal-room"
    secrets_tpl = (CHART / "templates" / "secrets.yaml").read_text()
    assert '"secret" $name "key" .Values.orderRedis.waitingRoom.existingSecretKey' in secrets_tpl
    room_job = pod_specs(docs)["ev-hotdeal-room"]["spec"]["containers"][0]["args"]
    assert room_job == [
        "room",
        "--product",
        "1",
        "--mode",
        "fifo",
        "--rate",
        "200",
        "--pass-ttl",
        "120",
    ]
    auto = helm(
        "helm4", "template", "ev", str(CHART), "-n", "games",
        "--set", "event.waitingRoom.autoTargetMs=250", "--show-only", "templates/ops.yaml",
    ).stdout  # fmt: skip
    (job,) = [
        d for d in yaml.safe_load_all(auto) if d and d["metadata"]["name"] == "ev-hotdeal-room"
    ]
    args = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-2:] == ["--auto-target-ms", "250"]


@pytest.mark.parametrize("binary", HELMS)
@pytest.mark.parametrize(
    ("order_redis", "workers"),
    [
        ({}, "4"),  # 4 sync workers for the 1 CPU requested
        ({"orderWrite": "inline"}, "2"),  # gthread, 32 threads and connections each
        ({"resources": {"requests": {"cpu": "2500m"}}}, "10"),
        ({"resources": {"requests": {"cpu": "1.5"}}, "orderWrite": "inline"}, "3"),
        ({"resources": {"requests": {"cpu": "100m"}}}, "1"),
        ({"workers": 7}, "7"),
        # No request: Kubernetes requests the limit (a helper's find: 4 for a 4-CPU limit).
        ({"resources": {"requests": None, "limits": {"cpu": "4"}}}, "16"),
    ],
)
def test_order_redis_workers_follow_the_cpu_request_and_the_write_mode(
    binary, tmp_path, order_redis, workers
):
    """A helper's find: a fixed `workers: 4` doubled inline mode's database sessions
    (helm 3 also takes a 0 from values for true: the template compares numbers)."""
    values = tmp_path / "v.yaml"
    values.write_text(yaml.safe_dump({"orderRedis": order_redis}))
    out = helm(binary, "template", "ev", str(CHART), "-f", str(values)).stdout
    spec = pod_specs([d for d in yaml.safe_load_all(out) if d])["ev-hotdeal-order-redis"]
    (app,) = [c for c in spec["spec"]["containers"] if c["name"] == "order-redis"]
    assert {e["name"]: e.get("value") for e in app["env"]}["HOTDEAL_WORKERS"] == workers


@pytest.mark.parametrize("binary", HELMS)
def test_a_cpu_request_the_chart_cannot_read_fails_with_a_message(binary, tmp_path):
    """A valid quantity in a spelling the template doesn't parse ("1e3m", "2k") would
    have been read as 1 worker: the render fails and says to set orderRedis.workers."""
    values = tmp_path / "v.yaml"
    values.write_text(yaml.safe_dump({"orderRedis": {"resources": {"requests": {"cpu": "1e3m"}}}}))
    done = helm(binary, "template", "ev", str(CHART), "-f", str(values), check=False)
    assert done.returncode != 0 and "set orderRedis.workers" in done.stderr
