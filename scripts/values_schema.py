#!/usr/bin/env python3
"""Keeps the chart's values.schema.json in step with the `## @param` lines of values.yaml.

Bitnami's format: `## @param <dotted.key> <description>` above the values. Every value
must be documented (itself or an ancestor), every `@param` must name a value and a schema
property, and the schema's `description` and `default` are written from them.

  scripts/values_schema.py            rewrite values.schema.json
  scripts/values_schema.py --check    exit 1 and say what differs (make test runs this)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

PARAM = re.compile(r"^\s*## @param (\S+) (.+?)\s*$")
CHART = Path(__file__).resolve().parent.parent / "charts" / "hotdeal"


def params(values_text: str) -> dict[str, str]:
    return {m[1]: m[2] for line in values_text.splitlines() if (m := PARAM.match(line))}


def _lookup(tree: object, key: str) -> tuple[bool, object]:
    node = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _schema_node(schema: dict, key: str) -> dict | None:
    node = schema
    for part in key.split("."):
        node = node.get("properties", {}).get(part)
        if node is None:
            return None
    return node


def _undocumented(values: dict, documented: set[str], prefix: str = "") -> list[str]:
    missing = []
    for name, value in values.items():
        key = f"{prefix}{name}"
        if key in documented:
            continue
        if isinstance(value, dict) and value:
            missing += _undocumented(value, documented, key + ".")
        else:
            missing.append(key)
    return missing


def problems_and_schema(chart: Path) -> tuple[list[str], dict]:
    """What is wrong with the @param lines, and the schema as it should be."""
    text = (chart / "values.yaml").read_text()
    values = yaml.safe_load(text)
    schema = json.loads((chart / "values.schema.json").read_text())
    documented = params(text)
    problems = [f"{k}: no @param line" for k in _undocumented(values, set(documented))]
    for key, description in documented.items():
        found, default = _lookup(values, key)
        node = _schema_node(schema, key)
        if not found:
            problems.append(f"{key}: @param names no value in values.yaml")
        elif node is None:
            problems.append(f"{key}: no property in values.schema.json")
        else:
            node["description"] = description
            node["default"] = default
    return problems, schema


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; fail on a difference")
    parser.add_argument("--chart", type=Path, default=CHART)
    args = parser.parse_args()
    problems, schema = problems_and_schema(args.chart)
    for problem in problems:
        print(f"values.yaml: {problem}", file=sys.stderr)
    path = args.chart / "values.schema.json"
    wanted = json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
    if args.check:
        if path.read_text() != wanted:
            print(
                f"{path} is not up to date with the @param lines: run scripts/values_schema.py",
                file=sys.stderr,
            )
            return 1
    elif not problems:
        path.write_text(wanted)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
