"""`make bench-auth`: what checking the buyer's token costs order-redis, in alternating
rounds of one run: the same sale (ab on the workshop route, every request a sale) with
HOTDEAL_AUTH=off and with HS256, ES256 and RS256 tokens, throughput and CPU per request.
ab sends one token, so the services verify it once and then find it in their cache of
verified tokens; what a token costs the first time (every buyer's first order) is
measured in-process on distinct tokens (hotdeal.identity.Verifier, the code the
services run)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from hotdeal.config import Settings
from hotdeal.identity import verifier_from_settings
from hotdeal_local import auth
from hotdeal_local.ab import run_ab
from hotdeal_local.servers import cpu_seconds, free_port
from hotdeal_local.stack import LocalStack, running
from hotdeal_ops.tokens import Signer, public_pem

HS_SECRET = "bench-only-hs256-secret-of-32-bytes!"


def _signers() -> dict[str, Signer]:
    return {
        "HS256": Signer(HS_SECRET.encode(), auth.ISSUER, auth.AUDIENCE),
        "ES256": Signer(ec.generate_private_key(ec.SECP256R1()), auth.ISSUER, auth.AUDIENCE),
        "RS256": Signer(
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            auth.ISSUER,
            auth.AUDIENCE,
        ),
    }


def _env(algorithm: str, signer: Signer | None) -> dict[str, str]:
    if signer is None:
        return {"HOTDEAL_AUTH": "off"}
    key = {"HOTDEAL_AUTH_HS256_SECRET": HS_SECRET, "HOTDEAL_AUTH_PUBLIC_KEY": ""}
    if algorithm != "HS256":
        key = {"HOTDEAL_AUTH_PUBLIC_KEY": public_pem(signer.key)}
    return {"HOTDEAL_AUTH": "jwt", **key}


def verify_us(signers: dict[str, Signer], n: int = 2000) -> dict[str, dict[str, float]]:
    """Microseconds to check a token not seen before, and one seen before (the cache),
    per algorithm."""
    out = {}
    for algorithm, signer in signers.items():
        settings = Settings(
            auth_issuer=auth.ISSUER,
            auth_audience=auth.AUDIENCE,
            **(
                {"auth_hs256_secret": HS_SECRET}
                if algorithm == "HS256"
                else {"auth_public_key": public_pem(signer.key)}
            ),
        )
        verifier = verifier_from_settings(settings, "bench")
        tokens = [f"Bearer {signer.token(f'b{i}', jti=str(i))}" for i in range(n)]
        timings = {}
        for phase in ("first", "cached"):
            began = time.perf_counter()
            for token in tokens:
                verifier.caller(token)
            timings[phase] = round((time.perf_counter() - began) / n * 1e6, 1)
        out[algorithm] = timings
    return out


def run_auth_bench(*, rounds: int, requests: int, concurrency: int, workdir: Path) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    signers = _signers()
    columns: list[tuple[str, Signer | None]] = [("off", None), *signers.items()]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in columns}
    stack = LocalStack(workdir=workdir)
    with running(stack):
        stack.start_stores()
        for round_no in range(1, rounds + 1):
            # Each column takes each place in turn: a round's later runs ran slower.
            shift = (round_no - 1) % len(columns)
            for name, signer in columns[shift:] + columns[:shift]:
                stack.reset(requests + 1000)
                port = free_port()
                writer = stack.start_writer()
                proc = stack.start_service("order-redis", port, **_env(name, signer))
                url = f"http://127.0.0.1:{port}/order-redis"
                token = signer.token(auth.WORKSHOP_BUYER) if signer else None
                try:
                    run_ab(url, requests=1000, concurrency=concurrency, gnuplot=workdir / "w.tsv",
                           token=token)  # fmt: skip
                    before = cpu_seconds(proc.proc.pid)
                    run = run_ab(url, requests=requests, concurrency=concurrency,
                                 gnuplot=workdir / "a.tsv", token=token)  # fmt: skip
                    cpu = cpu_seconds(proc.proc.pid) - before
                finally:
                    stack.stop_process(proc)
                    stack.stop_process(writer)
                sample = {
                    "requests_per_second": round(run.complete / run.seconds, 1),
                    "failed": run.failed + run.non_2xx,
                    "cpu_us_per_request": round(cpu / max(run.complete, 1) * 1e6, 1),
                }
                runs[name].append(sample)
                print(f"  round {round_no} {name}: {sample}", flush=True)

    def median(name: str, key: str) -> float:
        return statistics.median(s[key] for s in runs[name])

    def ratio(name: str) -> float:
        pairs = zip(runs[name], runs["off"], strict=True)
        return round(statistics.median(a["requests_per_second"] / b["requests_per_second"]
                                       for a, b in pairs), 3)  # fmt: skip

    checks = verify_us(signers)
    off_cpu = median("off", "cpu_us_per_request")
    result: dict[str, Any] = {
        "rounds": rounds,
        "requests": requests,
        "columns": {
            name: {
                "requests_per_second": median(name, "requests_per_second"),
                "cpu_us_per_request": median(name, "cpu_us_per_request"),
                **({"throughput_vs_off": ratio(name)} if name != "off" else {}),
            }
            for name, _ in columns
        },
        # A token's check in-process, first and cached, and the first as a share of a
        # whole order's CPU without auth.
        "verify_us": checks,
        "first_verify_share_of_order_cpu": {
            a: round(t["first"] / off_cpu, 3) for a, t in checks.items()
        },
        "runs": runs,
    }
    return result
