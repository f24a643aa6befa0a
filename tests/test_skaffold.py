"""skaffold.yaml, checked offline (no skaffold binary here): it builds both images from
their Dockerfiles, injects them into the chart's real values, and every profile patch
applies and renders a valid chart."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hotdeal_local.servers import REPO

CONFIG = yaml.safe_load((REPO / "skaffold.yaml").read_text())
CHART = REPO / "charts" / "hotdeal"


def apply(config: dict, patches: list[dict]) -> dict:
    """JSON Patch (add/remove/replace) as skaffold applies profile patches."""
    out = copy.deepcopy(config)
    for patch in patches:
        *parents, last = [
            p.replace("~1", "/").replace("~0", "~") for p in patch["path"].strip("/").split("/")
        ]
        node = out
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if patch["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
        elif isinstance(node, list):
            node.insert(int(last), patch["value"])
        else:
            assert patch["op"] == "replace" or last not in node, patch
            node[last] = patch["value"]
    return out


def values_path_exists(dotted: str) -> bool:
    node = yaml.safe_load((CHART / "values.yaml").read_text())
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_current_schema_and_both_images():
    assert CONFIG["apiVersion"].startswith("skaffold/v4beta")
    artifacts = {a["image"]: a for a in CONFIG["build"]["artifacts"]}
    assert set(artifacts) == {"hotdeal-legacy", "hotdeal-order-redis"}
    for name, artifact in artifacts.items():
        assert (REPO / artifact["context"] / artifact["docker"]["dockerfile"]).is_file(), name


def test_built_images_are_injected_into_real_values():
    release = CONFIG["manifests"]["helm"]["releases"][0]
    assert (REPO / release["chartPath"]).resolve() == CHART
    templates = release["setValueTemplates"]
    for image in ("hotdeal_legacy", "hotdeal_order_redis"):
        assert f"{{{{.IMAGE_REPO_{image}}}}}" in templates.values()
        assert f"{{{{.IMAGE_TAG_{image}}}}}" in templates.values()
    for key in [*templates, *release["setValues"]]:
        assert values_path_exists(key), key


@pytest.mark.parametrize("profile", [None, *(p["name"] for p in CONFIG["profiles"])])
def test_profiles_render_a_valid_chart(profile, tmp_path):
    config = CONFIG
    if profile:
        config = apply(
            CONFIG, next(p for p in CONFIG["profiles"] if p["name"] == profile)["patches"]
        )
    release = config["manifests"]["helm"]["releases"][0]
    sets = {
        **release["setValues"],
        "legacy.image.repository": "hotdeal-legacy",
        "legacy.image.tag": "dev",
        "orderRedis.image.repository": "hotdeal-order-redis",
        "orderRedis.image.tag": "dev",
    }
    for key in sets:
        assert values_path_exists(key), key
    args = [
        a
        for k, v in sets.items()
        for a in ("--set", f"{k}={str(v).lower() if isinstance(v, bool) else v}")
    ]
    done = subprocess.run(
        [str(Path(sys.prefix) / "tools" / "helm4"), "template", release["name"], str(CHART), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for forward in config["portForward"]:  # every forwarded service exists on that port
        svc = services[forward["resourceName"]]
        assert forward["port"] in [p["port"] for p in svc["spec"]["ports"]]
    images = {
        c["image"]
        for d in docs
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
        if c["name"] != "front"  # nginx, pulled as is
    }
    assert images <= {"hotdeal-legacy:dev", "hotdeal-order-redis:dev"}


def test_remote_clusters_get_their_images_pushed():
    """`push: false` forced once made `skaffold run` to a remote cluster unpullable;
    skaffold's own local-cluster detection decides."""
    config = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    assert "push" not in config["build"].get("local", {})


def test_the_deploy_waits_for_oracles_first_start():
    """skaffold's default 10 min status check failed `skaffold dev` while Oracle XE was
    still creating its database (its startupProbe allows 15 min)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    oracle = yaml.safe_load_all(
        subprocess.run(
            [
                str(Path(sys.prefix) / "tools" / "helm4"),
                "template",
                "ev",
                str(CHART),
                "--set",
                "auth.devKeys.enabled=true",  # as skaffold.yaml sets it
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    (sts,) = [
        d for d in oracle if d and d["kind"] == "StatefulSet" and "oracle" in d["metadata"]["name"]
    ]
    probe = sts["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    budget = max(
        probe["periodSeconds"] * probe["failureThreshold"],
        values["database"]["initSchema"]["waitSeconds"],
    )
    assert CONFIG["deploy"]["statusCheckDeadlineSeconds"] > budget
    assert CONFIG["deploy"]["tolerateFailuresUntilDeadline"] is True
