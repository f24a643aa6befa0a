#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages the local stack, the demo and the tests need,
# only if something is missing. Needs root or sudo when it has to install.
set -euo pipefail

need=()
command -v redis-server >/dev/null || need+=(redis-server)
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || need+=(postgresql)
command -v ab >/dev/null || need+=(apache2-utils)
command -v promtool >/dev/null || need+=(prometheus)
command -v runuser >/dev/null || need+=(util-linux)
# The tests' stand-in for a power loss counts Redis's fsyncs with strace.
command -v strace >/dev/null || need+=(strace)
# The front (nginx) where buyers arrive in `make up`, as in the chart.
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
if [ "${1:-}" = --images ]; then
  # Building and running the images without a Docker engine or a registry.
  command -v podman >/dev/null || need+=(podman)
  [ -x /usr/sbin/runc ] || need+=(runc)
  command -v debootstrap >/dev/null || need+=(debootstrap)
fi

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "installing Debian packages: ${need[*]}" >&2
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root or sudo to install: ${need[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
# The packaged services must not start on their default ports: the stack runs its own.
# invoke-rc.d asks /usr/sbin/policy-rc.d (that exact name); one already there is kept.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
  "${sudo[@]}" chmod 755 "$policy"
  trap '"${sudo[@]}" rm -f "$policy"' EXIT
fi
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
