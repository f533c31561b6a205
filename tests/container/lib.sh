# Shared by setup.sh and standin.sh: one line per step, one line naming what failed.
CACHE=${VIRNUCPRO_CONTAINER_CACHE:-/var/cache/virnucpro-triton}
DOCKER=${DOCKER:-docker}
mkdir -p "$CACHE"
say() { echo "container tier: $*"; }
fail() { echo "container tier: $*" >&2; exit 1; }
apt_install() {
  say "installing Debian's $1"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1"; } \
    > "$CACHE/apt.log" 2>&1 || fail "apt-get install $1 failed; see $CACHE/apt.log"
}
