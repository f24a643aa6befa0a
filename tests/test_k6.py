"""The k6 scripts the chart ships, run with the real k6 binary against the services."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hotdeal_local import auth
from hotdeal_local.servers import REPO, ops
from hotdeal_ops.tokens import private_pem

from .helpers import reconcile

K6 = Path(sys.prefix) / "tools" / "k6"


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    """1000 buyers' tokens, minted by `hotdeal-ops token` as the chart's load jobs do."""
    signer = auth.signer()
    done = ops(
        {
            "HOTDEAL_SIGNING_KEY": private_pem(signer.key),
            "HOTDEAL_SIGNING_KEY_ID": signer.kid or "",
            "HOTDEAL_AUTH_ISSUER": signer.issuer,
            "HOTDEAL_AUTH_AUDIENCE": signer.audience,
        },
        "token",
        "--users",
        "1000",
        "--prefix",
        "k6-",
    )
    path = tmp_path_factory.mktemp("k6") / "tokens.txt"
    path.write_text(done.stdout)
    return path


def k6(
    script: str, base_url: str, tokens: Path | None = None, **env: str
) -> subprocess.CompletedProcess:
    args = [str(K6), "run", "--no-usage-report", "--quiet"]
    # No latency threshold here: this is a loaded 2-core machine, and the suite asserts
    # what the scripts prove (no 5xx, exact sales); real load runs keep their p95.
    extra = {"TOKENS_FILE": str(tokens)} if tokens else {}
    for key, value in {"BASE_URL": base_url, "P95_MS": "0", **extra, **env}.items():
        args += ["-e", f"{key}={value}"]
    return subprocess.run(
        [*args, str(REPO / "k6" / script)], capture_output=True, text=True, timeout=180, check=False
    )


@pytest.mark.parametrize(
    ("fixture", "target"), [("legacy", "legacy"), ("order_redis", "order-redis")]
)
def test_workshop_script_sells_exactly_the_stock(
    request, fixture, target, reset, stack_env, writer_proc, tokens
):
    service = request.getfixturevalue(fixture)
    reset(40)
    done = k6("workshop.js", service.url, tokens, TARGET=target, VUS="20", ITERATIONS="60")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"hotdeal k6 summary: target={target}" in done.stdout
    assert "sold=40 sold_out=20 server_errors=0" in done.stdout
    assert "thresholds: all passed" in done.stdout
    code, report = reconcile(stack_env)
    assert code == 0, report["violations"]


def test_spike_script_at_a_constant_rate(order_redis, reset, stack_env, writer_proc, tokens):
    reset(100)
    done = k6("spike.js", order_redis.url, tokens, RATE="100", DURATION="2s", VUS="20")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sold=100 sold_out=" in done.stdout and "server_errors=0" in done.stdout
    code, report = reconcile(stack_env)
    assert code == 0, report["violations"]
    assert report["redis"]["persisted"] == 100


def test_thresholds_fail_the_run_on_server_errors(tmp_path):
    # Nothing listens there: every request fails, and k6 must say so with its exit code.
    done = k6("workshop.js", "http://127.0.0.1:9", VUS="2", ITERATIONS="4")
    assert done.returncode != 0
    assert "thresholds: FAILED" in done.stdout
