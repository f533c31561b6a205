#!/usr/bin/env bash
# Prepares what the container tier (tests/test_container.py) needs, on a Debian host as root:
#   1. a Docker engine: Debian's docker.io when dockerd is missing, dockerd started by hand
#      (default flags) when nothing answers;
#   2. Compose v2: Debian trixie's docker-compose package (bookworm's is v1);
#   3. the NGC base stand-in image $STANDIN (ngc-standin.Dockerfile), from a debootstrap
#      rootfs cached in $CACHE. Both are reused while their inputs are unchanged.
# Prints one line per step; stops at the first failure with a line naming it.
set -euo pipefail
cd "$(dirname "$0")/../.."
DOCKER=${DOCKER:-docker}
CACHE=${VIRNUCPRO_CONTAINER_CACHE:-/var/cache/virnucpro-triton}
STANDIN=${VIRNUCPRO_STANDIN:-virnucpro-ngc-standin:24.10-py3}
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
COMPOSE_DEB=$MIRROR/pool/main/d/docker-compose/docker-compose_2.26.1-4_amd64.deb
PYTHON=${PYTHON:-.venv/bin/python}  # pip and zipfile for the wheel (make venv's)
# CPython 3.10 to copy in: a build linked against bookworm's libraries (these machines' pyenv)
PYTHON310=${PYTHON310:-$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10.* 2>/dev/null | tail -1)}
# The libraries CPython's extension modules link against, beyond debootstrap's minbase.
PACKAGES=ca-certificates,libssl3,libffi8,libsqlite3-0,libreadline8,libncursesw6,libuuid1,libexpat1,libbz2-1.0,liblzma5,libnsl2,libtirpc3,libgssapi-krb5-2,libbsd0

say() { echo "container tier: $*"; }
fail() { echo "container tier: $*" >&2; exit 1; }
apt_install() {
  say "installing Debian's $1"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1"; } \
    > "$CACHE/apt.log" 2>&1 || fail "apt-get install $1 failed; see $CACHE/apt.log"
}
mkdir -p "$CACHE"

# --- 1. the engine -------------------------------------------------------------------------
if ! "$DOCKER" info > /dev/null 2>&1; then
  command -v dockerd > /dev/null || apt_install docker.io
  say "starting dockerd (log: $CACHE/dockerd.log)"
  nohup dockerd > "$CACHE/dockerd.log" 2>&1 &
  for _ in $(seq 60); do "$DOCKER" info > /dev/null 2>&1 && break; sleep 1; done
  "$DOCKER" info > /dev/null 2>&1 || fail "dockerd did not answer within 60 s; see $CACHE/dockerd.log"
fi
say "engine $("$DOCKER" version --format '{{.Server.Version}}')"

# --- 2. Compose v2 -------------------------------------------------------------------------
if ! "$DOCKER" compose version > /dev/null 2>&1; then
  say "installing Compose v2 from Debian trixie's docker-compose package"
  curl -sSfL -o "$CACHE/docker-compose.deb" "$COMPOSE_DEB" || fail "could not download $COMPOSE_DEB"
  dpkg -i "$CACHE/docker-compose.deb" > /dev/null || fail "dpkg -i $CACHE/docker-compose.deb failed"
fi
say "$("$DOCKER" compose version)"

# --- 3. the NGC base stand-in --------------------------------------------------------------
[ -x "$PYTHON310/bin/python3.10" ] || fail "no CPython 3.10 build found; set PYTHON310 to its prefix"
pytriton=$(grep -E '^nvidia-pytriton==' requirements.lock) || fail "requirements.lock pins no nvidia-pytriton"
inputs=$( (cat tests/container/ngc-standin.Dockerfile tests/container/setup.sh; echo "$pytriton") | sha256sum | cut -c1-16)
if [ "$("$DOCKER" image inspect --format '{{index .Config.Labels "virnucpro.inputs"}}' "$STANDIN" 2>/dev/null)" = "$inputs" ]; then
  say "stand-in $STANDIN is up to date"
  exit 0
fi

rootfs_tar=$CACHE/rootfs-$SUITE.tar
if [ ! -s "$rootfs_tar" ]; then
  command -v debootstrap > /dev/null || apt_install debootstrap
  say "debootstrap $SUITE (minbase) into $CACHE"
  rm -rf "$CACHE/rootfs"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$CACHE/rootfs" "$MIRROR" \
    > "$CACHE/debootstrap.log" 2>&1 || fail "debootstrap failed; see $CACHE/debootstrap.log"
  rm -rf "$CACHE/rootfs/var/cache/apt/archives/"*.deb "$CACHE/rootfs/var/lib/apt/lists/"*
  tar -C "$CACHE/rootfs" -cf "$rootfs_tar.part" . && mv "$rootfs_tar.part" "$rootfs_tar"
  rm -rf "$CACHE/rootfs"
fi
"$DOCKER" image inspect virnucpro-debian-rootfs:$SUITE > /dev/null 2>&1 \
  || "$DOCKER" import "$rootfs_tar" virnucpro-debian-rootfs:$SUITE > /dev/null

context=$CACHE/standin-context
rm -rf "$context" && mkdir -p "$context/python" "$context/tritonserver/backends/python"
say "assembling the stand-in's context ($pytriton, Python $("$PYTHON310/bin/python3.10" -V 2>&1 | cut -d' ' -f2))"
# CPython 3.10 without its tests, Tk and the host's site hooks; like NGC's python3, no
# ensurepip (pip itself stays).
tar -C "$PYTHON310" --exclude=lib/python3.10/test --exclude='lib/python3.10/tkinter' \
  --exclude='lib/python3.10/ensurepip' --exclude='*.pth' --exclude='__pycache__' \
  --exclude='lib/python3.10/site-packages/setuptools*' --exclude='lib/python3.10/site-packages/pkg_resources' \
  --exclude='lib/python3.10/site-packages/_distutils_hack' --exclude='lib/python3.10/lib-dynload/_tkinter*' \
  -cf - bin/python3.10 bin/python3 lib | tar -C "$context/python" -xf -
wheel_dir=$CACHE/wheel
rm -rf "$wheel_dir" && mkdir -p "$wheel_dir"
"$PYTHON" -m pip download --no-deps --only-binary=:all: --dest "$wheel_dir" "$pytriton" \
  > "$CACHE/pip.log" 2>&1 || fail "pip download $pytriton failed; see $CACHE/pip.log"
"$PYTHON" -m zipfile -e "$wheel_dir"/nvidia_pytriton-*.whl "$wheel_dir/unpacked"
server=$wheel_dir/unpacked/pytriton/tritonserver
cp -r "$server/bin" "$server/caches" "$context/tritonserver/"
cp -r "$server/backends/python/." "$context/tritonserver/backends/python/"
cp "$server/python_backend_stubs/3.10/triton_python_backend_stub" "$context/tritonserver/backends/python/"
cp -r "$wheel_dir/unpacked/nvidia_pytriton.libs" "$context/tritonserver/lib"
rm -rf "$context/tritonserver/backends/python/__pycache__"
# zipfile drops the exec bits
chmod 0755 "$context/tritonserver/bin/tritonserver" "$context/tritonserver/backends/python/triton_python_backend_stub"
cp /etc/ssl/certs/ca-certificates.crt "$context/"
say "building $STANDIN"
"$DOCKER" build --quiet --force-rm --label "virnucpro.inputs=$inputs" -t "$STANDIN" \
  -f tests/container/ngc-standin.Dockerfile "$context" > "$CACHE/standin-build.log" 2>&1 \
  || fail "building the stand-in failed; see $CACHE/standin-build.log"
rm -rf "$context" "$wheel_dir"
say "stand-in $STANDIN built"
