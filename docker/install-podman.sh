#!/usr/bin/env bash
# Install what the container test needs from Debian's packages: podman (the engine, rootful,
# with runc: crun fails on these machines), buildah (podman build), debootstrap (the base image,
# since no registry is reachable) and tini-compatible init (catatonit, used by `podman --init`).
# Idempotent and quiet; needs root. Exits 0 when everything is already there.
set -euo pipefail

need=()
for tool in podman runc debootstrap; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
# `podman run --init` needs an init binary (catatonit on Debian).
[ -x /usr/libexec/podman/catatonit ] || [ -x /usr/bin/catatonit ] || need+=(catatonit)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-podman: need root to apt-get install ${need[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends podman buildah runc debootstrap catatonit \
  uidmap fuse-overlayfs slirp4netns containernetworking-plugins iptables >/dev/null
echo "install-podman: installed $(podman --version)" >&2
