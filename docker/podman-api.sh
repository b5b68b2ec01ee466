#!/usr/bin/env bash
# Run a command against podman's Docker API (kfp.local.DockerRunner speaks only that): start
# `podman system service` on a private socket, point DOCKER_HOST at it, run, stop the service.
# usage: docker/podman-api.sh COMMAND...   (with DOCKER_HOST already set, just runs COMMAND)
set -euo pipefail
if [[ -n ${DOCKER_HOST:-} ]]; then
  exec "$@"
fi
dir=$(mktemp -d)
podman system service --time=0 "unix://$dir/podman.sock" &
service=$!
trap 'kill "$service" 2>/dev/null; wait "$service" 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 300); do
  [[ -S $dir/podman.sock ]] && break
  sleep 0.1
done
[[ -S $dir/podman.sock ]] || { echo "podman system service did not start" >&2; exit 1; }
DOCKER_HOST="unix://$dir/podman.sock" "$@"
