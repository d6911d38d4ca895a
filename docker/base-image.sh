#!/usr/bin/env bash
# Make the Debian bookworm base image for podman builds where no container registry is reachable:
# debootstrap a minbase root file system once (cached as a tarball under ~/.cache/serve), then
# `podman import` it. Prints the image name; the Dockerfiles take it as --build-arg BASE_IMAGE.
# Elsewhere, use debian:bookworm-slim (the Dockerfile.cpu default) and skip this script.
set -euo pipefail

NAME="${SERVE_BASE_IMAGE:-localhost/serve-base:bookworm}"
CACHE="${SERVE_CACHE_DIR:-$HOME/.cache/serve}/base"
TARBALL="$CACHE/bookworm-minbase.tar"

die() { echo "base-image: $*" >&2; exit 1; }

# The Debian mirror this machine's apt uses (deb822 "URIs:" or one-line "deb URL bookworm ...").
debian_mirror() {
  local files=(/etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/sources.list)
  local f
  for f in "${files[@]}"; do
    [ -f "$f" ] || continue
    awk '
      /^[[:space:]]*#/ {next}
      /^URIs:/ {for (i = 2; i <= NF; i++) if ($i !~ /security/) {print $i; exit}}
      /^deb[[:space:]]/ {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {if ($i !~ /security/) {print $i; exit}}}
    ' "$f"
  done | head -n 1
}

if podman image exists "$NAME" 2>/dev/null; then
  echo "$NAME"
  exit 0
fi
if [ ! -s "$TARBALL" ]; then
  command -v debootstrap >/dev/null || die "debootstrap is missing: run docker/install-podman.sh"
  mirror="$(debian_mirror)"
  [ -n "$mirror" ] || die "no Debian mirror found in /etc/apt/sources.list.d or /etc/apt/sources.list"
  mkdir -p "$CACHE"
  root="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
  trap 'rm -rf "$root"' EXIT
  echo "base-image: debootstrap bookworm from $mirror (once; cached in $TARBALL)" >&2
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $CACHE/debootstrap.log"
  # Keep the image small; apt in the build fetches fresh lists anyway.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -cf "$TARBALL.part" . && mv "$TARBALL.part" "$TARBALL"
fi
podman import --quiet "$TARBALL" "$NAME" >/dev/null || die "podman import $TARBALL failed"
echo "$NAME"
