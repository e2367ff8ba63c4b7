#!/usr/bin/env python3
"""Print the project's Python requirements, one per line, from pyproject.toml.

The VM installs exactly what pyproject.toml declares ([project].dependencies
plus the "dev" extra), so the list is read here instead of being copied into
the harness, where it would drift. With --build-system the [build-system]
requirements (hatchling) are added too: the guest has no network, and an
editable install of the project (`pip install --no-index -e .`) needs them.

Runs on the host (building the offline box) and inside the guest (provision.sh),
both with Python 3.11, so only the standard library is used.
"""

import argparse
import sys
import tomllib


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", help="path to pyproject.toml")
    parser.add_argument("--extra", action="append", default=["dev"],
                        help="optional-dependency group to add (default: dev)")
    parser.add_argument("--build-system", action="store_true",
                        help="also print [build-system].requires")
    args = parser.parse_args()

    with open(args.pyproject, "rb") as f:
        data = tomllib.load(f)

    project = data.get("project", {})
    reqs = list(project.get("dependencies", []))
    extras = project.get("optional-dependencies", {})
    for name in dict.fromkeys(args.extra):  # de-duplicated, order kept
        if name not in extras:
            print(f"requirements.py: no optional-dependencies group {name!r}", file=sys.stderr)
            return 1
        reqs += extras[name]
    if args.build_system:
        reqs += data.get("build-system", {}).get("requires", [])

    for req in dict.fromkeys(reqs):
        print(req)
    return 0


if __name__ == "__main__":
    sys.exit(main())
