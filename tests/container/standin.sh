#!/usr/bin/env bash
# Builds $STANDIN, a stand-in of nvcr.io/nvidia/tritonserver:24.10-py3 (ngc-standin.Dockerfile),
# from a debootstrap rootfs cached in $CACHE. Reused while this script, the Dockerfile and the
# nvidia-pytriton pin are unchanged. Run by setup.sh; needs root, a Docker engine, make venv.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=lib.sh
. tests/container/lib.sh
STANDIN=${VIRNUCPRO_STANDIN:-virnucpro-ngc-standin:24.10-py3}
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
PYTHON=${PYTHON:-.venv/bin/python}  # pip and zipfile for the wheel (make venv's)
# CPython 3.10 to copy in: a build linked against bookworm's libraries (these machines' pyenv)
PYTHON310=${PYTHON310:-$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10.* 2>/dev/null | tail -1)}
# The libraries CPython's extension modules link against, beyond debootstrap's minbase.
PACKAGES=ca-certificates,libssl3,libffi8,libsqlite3-0,libreadline8,libncursesw6,libuuid1,libexpat1,libbz2-1.0,liblzma5,libnsl2,libtirpc3,libgssapi-krb5-2,libbsd0

[ -x "$PYTHON310/bin/python3.10" ] || fail "no CPython 3.10 build found; set PYTHON310 to its prefix"
pytriton=$(grep -E '^nvidia-pytriton==' requirements.lock) || fail "requirements.lock pins no nvidia-pytriton"
inputs=$( (cat tests/container/ngc-standin.Dockerfile tests/container/standin.sh; echo "$pytriton") | sha256sum | cut -c1-16)
# The inputs' hash beside the image's id: an unchanged stand-in keeps its id, so the image
# built on it stays cached too.
stamp=$CACHE/standin.inputs
if [ -s "$stamp" ] && [ "$(cat "$stamp")" = "$inputs $("$DOCKER" image inspect --format '{{.Id}}' "$STANDIN" 2>/dev/null)" ]; then
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
"$DOCKER" build --quiet --force-rm -t "$STANDIN" \
  -f tests/container/ngc-standin.Dockerfile "$context" > "$CACHE/standin-build.log" 2>&1 \
  || fail "building the stand-in failed; see $CACHE/standin-build.log"
rm -rf "$context" "$wheel_dir"
echo "$inputs $("$DOCKER" image inspect --format '{{.Id}}' "$STANDIN")" > "$stamp"
say "stand-in $STANDIN built"
