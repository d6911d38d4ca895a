#!/usr/bin/env bash
# Build an image from a small build context (only what the Dockerfiles copy) with podman or docker.
#   docker/build-image.sh [--engine podman|docker] [--file docker/Dockerfile.cpu] [--tag serve:cpu]
#                         [--base IMAGE] [-- extra build args...]
# With podman and no --base, the base image is made with debootstrap (docker/base-image.sh), as
# no registry is reachable here; docker uses the Dockerfile's default base (or --base).
# The torch wheel pinned by TORCH_VERSION is copied from WHEEL_DIR (default: pip's find-links,
# /opt/wheels) into the context when it is there, so the build needs no torch download.
# Nothing else from the host goes in but the CA bundle and package indexes pip uses here (below).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
engine="${CONTAINER_ENGINE:-}"
file="docker/Dockerfile.cpu"
tag="serve:cpu"
base=""
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --engine) engine="$2"; shift 2 ;;
    --file) file="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --base) base="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "build-image: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$engine" ]; then
  if command -v podman >/dev/null; then engine=podman; else engine=docker; fi
fi
command -v "$engine" >/dev/null || { echo "build-image: $engine is not installed" >&2; exit 1; }

torch_version="${TORCH_VERSION:-2.13.0}"
wheel_dir="${WHEEL_DIR:-/opt/wheels}"
# One context per tag, so two builds (a make target and the test) never share one.
context="${DOCKER_CONTEXT_DIR:-$repo/build/docker-context/${tag//[^a-zA-Z0-9_.-]/_}}"

# The context: tracked and new (not ignored) files of the paths the Dockerfiles copy.
rm -rf "$context"
mkdir -p "$context"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard -- \
   setup.py container djl_python handlers docker \
 | while IFS= read -r -d '' path; do [ -f "$path" ] && printf '%s\0' "$path"; done \
 | xargs -0 cp --parents -t "$context")
mkdir -p "$context/docker/wheels"
# Only for a Dockerfile that reads docker/wheels (the CPU one: the GPU image takes torch's CUDA
# build from the index, never this machine's CPU wheel).
if grep -q 'docker/wheels' "$repo/$file"; then
  for wheel in "$wheel_dir"/torch-"$torch_version"[-+]*.whl; do
    [ -f "$wheel" ] && cp "$wheel" "$context/docker/wheels/"
  done
fi
# The CA bundle pip trusts on this host (PIP_CERT or pip's `cert` setting), so pip inside the
# build works behind a TLS-inspecting proxy too; the image adds it to its trust store.
ca_bundle="${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}"
mkdir -p "$context/docker/certs"
[ -n "$ca_bundle" ] && [ -s "$ca_bundle" ] && cp "$ca_bundle" "$context/docker/certs/build-host-ca.crt"

# The package indexes pip uses on this host (a mirror, if it is set up with one), for the pip steps
# of Dockerfiles that bind-mount docker/pip; file:// indexes are left out (not in the build).
pip_setting() { python3 -m pip config get "global.$1" 2>/dev/null || true; }
index_url="${PIP_INDEX_URL:-$(pip_setting index-url)}"
extra_urls="$(printf '%s\n' ${PIP_EXTRA_INDEX_URL:-$(pip_setting extra-index-url)} | grep -E '^https?://' || true)"
mkdir -p "$context/docker/pip"
{
  echo "[global]"
  if [ -n "$index_url" ]; then echo "index-url = $index_url"; fi
  if [ -n "$extra_urls" ]; then echo "extra-index-url = $(echo $extra_urls)"; fi
} > "$context/docker/pip/pip.conf"

args=(build -f "$context/$file" -t "$tag" --build-arg "TORCH_VERSION=$torch_version")
if [ "$engine" = podman ]; then
  [ -n "$base" ] || base="$("$repo/docker/base-image.sh")"
  # runc (crun fails here), host network for apt/pip in RUN steps, layers cached between builds.
  args+=(--runtime runc --network host --layers --ulimit nofile=20000:20000)
fi
[ -n "$base" ] && args+=(--build-arg "BASE_IMAGE=$base")
echo "build-image: $engine ${args[*]} ${extra[*]} $context" >&2
exec "$engine" "${args[@]}" "${extra[@]}" "$context"
