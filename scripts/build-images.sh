#!/usr/bin/env bash
# Builds both service images with podman, offline: the wheels come from wheelhouse/
# (filled here from the pinned requirements), the base from BASE_IMAGE (default: the
# debootstrap image of scripts/make-base-image.sh). TAG defaults to "dev".
set -euo pipefail
cd "$(dirname "$0")/.."
base=${BASE_IMAGE:-localhost/hotdeal-base:bookworm}
tag=${TAG:-dev}
python=${PYTHON:-.venv/bin/python}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/images/podman/containers.conf}

if [ "$base" = localhost/hotdeal-base:bookworm ]; then
  scripts/make-base-image.sh "$base"
fi
echo "wheelhouse: pinned wheels for the images ..." >&2
"$python" -m pip download -q --disable-pip-version-check --only-binary=:all: \
  -r requirements.txt "setuptools>=75" -d wheelhouse
# Wheels whose environment marker is false here but may be true in the image (redis-py
# needs async-timeout on Python < 3.11.3, e.g. Debian bookworm's 3.11.2).
grep -E '; *python_full_version' requirements.txt | cut -d';' -f1 \
  | xargs -r "$python" -m pip download -q --disable-pip-version-check --no-deps \
      --only-binary=:all: -d wheelhouse
for svc in legacy order-redis; do
  echo "building localhost/hotdeal-$svc:$tag from $base ..." >&2
  podman --runtime /usr/sbin/runc build -q --network host \
    -f "images/$svc/Dockerfile" \
    --build-arg BASE_IMAGE="$base" --build-arg PIP_ARGS=--no-index \
    -t "localhost/hotdeal-$svc:$tag" .
done
