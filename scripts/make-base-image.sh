#!/usr/bin/env bash
# Builds a local Debian bookworm + Python 3.11 base image for machines that cannot pull
# python:3.11-slim-bookworm (no registry reachable): debootstrap into a folder, then
# `podman import`. Pass it to the builds as BASE_IMAGE. Needs root, debootstrap, podman.
set -euo pipefail
name=${1:-localhost/hotdeal-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$(cd "$(dirname "$0")/.." && pwd)/images/podman/containers.conf}

if podman image exists "$name"; then
  echo "base image $name exists" >&2
  exit 0
fi
root=$(mktemp -d /var/tmp/hotdeal-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "debootstrap bookworm into $root (a few minutes) ..." >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$root" "$mirror" >/dev/null
# Smaller image: no package caches, lists or docs.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
tar -C "$root" -c . | podman import --change 'CMD ["/bin/bash"]' - "$name" >/dev/null
echo "built $name" >&2
