"""What each image carries, checked offline against what its processes import.

Each image installs only the packages and dependencies its own
`images/<service>/pyproject.toml` lists. Following the imports of the processes an image
runs (every `import`, in functions too) must reach exactly those packages and need no
dependency the file leaves out: the legacy image once shipped the writer, the ops CLI,
the kubernetes client and the local tools, and PyYAML came only by way of kubernetes.
`make test-images` checks the built images themselves."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from hotdeal_local.servers import REPO

ROOT = tomllib.loads((REPO / "pyproject.toml").read_text())
FIRST_PARTY = ROOT["tool"]["setuptools"]["package-dir"]

# The modules each image's processes start from: the gunicorn config (its wsgi_app and
# its admin listener), and the console scripts the chart runs from that image.
ENTRIES = {
    "legacy": ["hotdeal_legacy.app", "hotdeal.admin", "hotdeal.gunicorn_setup"],
    "order-redis": [
        "hotdeal_order_redis.app",
        "hotdeal.admin",
        "hotdeal.gunicorn_setup",
        "hotdeal_order_redis.writer",
        "hotdeal_ops.cli",
    ],
}
# Needed but never imported by our modules: the server in the image's CMD, and the
# drivers SQLAlchemy loads by the URL's dialect name.
NOT_IMPORTED = {
    "gunicorn": "the image's CMD",
    "psycopg": "postgresql+psycopg URLs",
    "oracledb": "oracle+oracledb URLs",
}


def image_project(service: str) -> dict:
    return tomllib.loads((REPO / "images" / service / "pyproject.toml").read_text())


def _dist(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _module_file(module: str) -> Path | None:
    package, _, rest = module.partition(".")
    if package not in FIRST_PARTY:
        return None
    base = (
        REPO / FIRST_PARTY[package] / Path(*rest.split("."))
        if rest
        else REPO / FIRST_PARTY[package]
    )
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, module: str) -> set[str]:
    names = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
    return names


@cache
def reach(service: str) -> tuple[frozenset[str], frozenset[str]]:
    """(first-party modules, third-party top-level names) the image's processes import."""
    seen: set[str] = set()
    third: set[str] = set()
    todo = list(ENTRIES[service])
    # The gunicorn config itself is run by gunicorn from /app.
    config = REPO / "images" / service / "gunicorn.conf.py"
    todo += sorted(_imports(config, "gunicorn_conf"))
    todo += re.findall(r'"(hotdeal\w*\.[\w.]+):', config.read_text())  # wsgi_app, probes
    while todo:
        name = todo.pop()
        top = name.split(".")[0]
        if top == "__future__" or top in sys.stdlib_module_names:
            continue
        if top not in FIRST_PARTY:
            third.add(top)
            continue
        path = _module_file(name)
        if path is None or name in seen:
            continue
        seen.add(name)
        todo += sorted(_imports(path, name))
    return frozenset(seen), frozenset(third)


@pytest.mark.parametrize("service", ENTRIES)
def test_an_image_ships_exactly_the_packages_its_processes_import(service):
    project = image_project(service)
    packages = set(project["tool"]["setuptools"]["packages"])
    modules, _ = reach(service)
    assert {m.split(".")[0] for m in modules} == {p.split(".")[0] for p in packages}
    assert "hotdeal_local" not in packages  # local tools never go into an image
    # Same folders as the development install.
    for package, folder in project["tool"]["setuptools"]["package-dir"].items():
        assert FIRST_PARTY[package] == folder
    for script in project["project"].get("scripts", {}).values():
        assert script.split(".")[0] in packages


@pytest.mark.parametrize("service", ENTRIES)
def test_an_image_declares_exactly_the_dependencies_it_imports(service):
    declared = {_dist(r) for r in image_project(service)["project"]["dependencies"]}
    _, third = reach(service)
    owners = packages_distributions()
    imported = {_dist(owners[name][0]) for name in third}
    assert imported <= declared, f"imported but not declared: {imported - declared}"
    unused = declared - imported - set(NOT_IMPORTED)
    assert not unused, f"declared but never imported: {unused}"
    # Every image dependency is a dependency of the development install, pinned there.
    root = {_dist(r) for r in ROOT["project"]["dependencies"]}
    assert declared <= root
    lines = (REPO / "requirements.txt").read_text().splitlines()
    pins = {_dist(line) for line in lines if "==" in line}
    assert declared <= pins


def test_the_legacy_image_has_no_writer_ops_or_kubernetes():
    modules, third = reach("legacy")
    assert not {m for m in modules if m.startswith(("hotdeal_ops", "hotdeal_order_redis"))}
    assert "kubernetes" not in third


def test_the_build_context_sends_only_what_the_images_install():
    lines = (REPO / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    for service in ENTRIES:
        folders = set(image_project(service)["tool"]["setuptools"]["package-dir"].values())
        assert folders <= allowed | {f"images/{service}/{Path(f).name}" for f in folders}
        dockerfile = (REPO / "images" / service / "Dockerfile").read_text()
        for folder in folders:
            assert f"COPY {folder}/ {folder}/" in dockerfile, (service, folder)
    assert "tools" not in allowed and "tools/" not in allowed


@pytest.mark.parametrize("project", ["root", "legacy", "order-redis"])
def test_every_subpackage_of_a_listed_package_is_listed(project):
    """setuptools installs only the packages `packages` names: hotdeal.model, new and
    not listed, was missing from both images (only `make test-images` saw it; the
    development install maps whole folders)."""
    tool = (ROOT if project == "root" else image_project(project))["tool"]["setuptools"]
    listed = set(tool["packages"])
    for top in listed & set(FIRST_PARTY):
        base = REPO / FIRST_PARTY[top]
        for init in base.rglob("__init__.py"):
            dotted = ".".join((top, *init.parent.relative_to(base).parts))
            assert dotted in listed, (project, dotted)
