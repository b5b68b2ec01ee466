#!/usr/bin/env bash
# Make a Python base image without pulling one: Debian bookworm (minbase) with python3 and venv,
# built by debootstrap from Debian's package archive and imported as IMAGE. For machines that
# reach Debian's archive but no container registry; elsewhere use python:3.11-slim-bookworm.
# usage: docker/base-image.sh ENGINE IMAGE   (needs root, debootstrap; skips an existing IMAGE)
set -euo pipefail
engine=${1:?usage: $0 ENGINE IMAGE}
image=${2:?usage: $0 ENGINE IMAGE}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if "$engine" image inspect "$image" >/dev/null 2>&1; then
  echo "$image exists"
  exit 0
fi
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$rootfs" "$mirror" >/dev/null
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
tar -C "$rootfs" -c . | "$engine" import --change 'CMD ["python3"]' - "$image"
