"""The contract, checked from outside: schemathesis (an independent OpenAPI tester) runs
against each live service with the document that service publishes, every check on
(status codes, schemas, headers, negative data refused, auth not ignored, methods),
its stateful phase following the document's links (order, then look it up). A fixed
seed here; `make test-explore` searches widely."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hotdeal_local import auth

from .test_front import fronted

ST = Path(sys.prefix) / "bin" / "st"
EXPLORE = os.environ.get("HOTDEAL_HYPOTHESIS") == "explore"


def schemathesis(service, workdir: Path) -> subprocess.CompletedProcess:
    args = [
        str(ST),
        "--config-file",
        str(Path(__file__).with_name("schemathesis.toml")),
        "run",
        f"{service.url}/openapi.json",
        "--checks",
        "all",
        "--header",
        # A service's token (the payment callback's scope): it may confirm and cancel.
        f"Authorization: Bearer {auth.token('contract', scope=auth.ACT_FOR)}",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(workdir),
    ]
    if EXPLORE:
        args += ["--max-examples", "300", "--generation-database", "none"]
    else:
        args += ["--seed", "23", "--generation-deterministic", "--max-examples", "25"]
    return subprocess.run(
        args, capture_output=True, text=True, timeout=600, check=False, cwd=workdir
    )


@pytest.mark.parametrize("name", ["legacy", "order-redis"])
def test_an_independent_tester_finds_no_disagreement(name, stack_env, reset, tmp_path):
    # One token for all its requests, so no per-user limit: its orders must sell for the
    # stateful phase to follow the links to their lookups.
    # As buyers reach it: through its front (nginx answers some methods itself).
    with fronted(stack_env, name, HOTDEAL_PER_USER_LIMIT="0") as (service, _, _):
        reset(100_000)
        done = schemathesis(service, tmp_path)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    links = {"legacy": 2, "order-redis": 4}[name]  # order-redis: confirm and cancel too
    assert f"API Links:    {links} covered / {links} selected" in done.stdout, done.stdout[-3000:]
