#!/usr/bin/env bash
# Prepares what the container tier (test_image.py beside this file) needs, on a Debian host as root:
#   1. a Docker engine: Debian's docker.io when dockerd is missing, dockerd started by hand
#      (default flags) when nothing answers;
#   2. Compose v2: Debian trixie's docker-compose package (bookworm's is v1);
#   3. no containers or compose networks left by an interrupted run;
#   4. the NGC base stand-in (standin.sh).
# Prints one line per step; stops at the first failure with a line naming it.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=lib.sh
. tests/container/lib.sh
MIRROR=http://deb.debian.org/debian
COMPOSE_DEB=$MIRROR/pool/main/d/docker-compose/docker-compose_2.26.1-4_amd64.deb

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

# --- 3. what an interrupted run left (test containers and compose projects: virnucpro-test-*)
leftovers=$("$DOCKER" ps -aq --filter name=virnucpro-test-)
[ -z "$leftovers" ] || { say "removing containers of an interrupted run"; "$DOCKER" rm -f $leftovers > /dev/null; }
networks=$("$DOCKER" network ls -q --filter name=virnucpro-test-)
[ -z "$networks" ] || "$DOCKER" network rm $networks > /dev/null

# --- 4. the NGC base stand-in --------------------------------------------------------------
exec tests/container/standin.sh
