#!/usr/bin/env bash
# Docker for `make up`, `make down` and `make test-containers`: the one place that starts the
# engine, chooses public or locally built images, and builds the local Debian base.
#
#   scripts/containers.sh engine        start dockerd when Docker is installed but not running
#                                       (root; its PID goes to build/containers/dockerd.pid)
#   scripts/containers.sh stop-engine   stop that dockerd, by its PID (never one we did not start)
#   scripts/containers.sh images        print "public" or "local" (see MT_IMAGES below)
#   scripts/containers.sh base          build the local base images when missing
#   scripts/containers.sh compose ARGS  docker-compose with the files for the chosen images
#   scripts/containers.sh up            `make up`: build, start, wait until every service is healthy
#   scripts/containers.sh down [-v]     `make down`: stop and remove (-v: the volumes, i.e. the data)
#   scripts/containers.sh test ARGS     `make test-containers`: pytest tests/containers, with the
#                                       engine started for the run (and stopped after) when needed
#
# MT_IMAGES=public  the public images of docker-compose.yml (a user's machine)
# MT_IMAGES=local   the same services built from a Debian base bootstrapped here
#                   (docker-compose.local.yml; for machines that reach no image registry)
# MT_IMAGES=auto    (default) public when Docker Hub answers a pull, local otherwise
#
# The local base is `debootstrap --variant=minbase bookworm` from the Debian mirror apt uses,
# imported as minitwitter-local/debian:bookworm. Builds on this machine download packages
# through its egress, which may inspect TLS: the host's CA bundle is added to the local base
# only (never to an image built from docker-compose.yml alone).
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=build/containers
BASE_IMAGE=minitwitter-local/debian:bookworm
PYTHON_IMAGE=minitwitter-local/python:3.11-bookworm
PROBE_IMAGE=${MT_PROBE_IMAGE:-nginxinc/nginx-unprivileged:1.27.3-alpine}
DOCKER=${DOCKER:-$(command -v /usr/bin/docker || command -v docker || echo docker)}
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}

engine_up() { "$DOCKER" info >/dev/null 2>&1; }

start_engine() {
  if engine_up; then return 0; fi
  if ! command -v dockerd >/dev/null 2>&1; then
    echo "Docker is not installed: run 'scripts/debian-tools.sh containers' (as root)" >&2
    return 1
  fi
  if [ "$EUID" -ne 0 ]; then
    echo "the Docker engine is not running: start it (e.g. 'sudo dockerd &'), then retry" >&2
    return 1
  fi
  mkdir -p "$STATE"
  echo "starting dockerd (log: $STATE/dockerd.log)"
  setsid dockerd >"$STATE/dockerd.log" 2>&1 < /dev/null &
  echo $! > "$STATE/dockerd.pid"
  for _ in $(seq 1 60); do
    engine_up && return 0
    sleep 0.5
  done
  echo "dockerd did not come up; see $STATE/dockerd.log" >&2
  return 1
}

stop_engine() {
  [ -f "$STATE/dockerd.pid" ] || return 0
  local pid
  pid=$(cat "$STATE/dockerd.pid")
  if kill -0 "$pid" 2>/dev/null && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = dockerd ]; then
    kill -TERM "$pid"
    for _ in $(seq 1 60); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
  fi
  rm -f "$STATE/dockerd.pid"
}

which_images() {
  case "${MT_IMAGES:-auto}" in
    public|local) echo "$MT_IMAGES" ;;
    auto)
      if "$DOCKER" image inspect "$PROBE_IMAGE" >/dev/null 2>&1 \
          || timeout 60 "$DOCKER" pull -q "$PROBE_IMAGE" >/dev/null 2>&1; then
        echo public
      else
        echo local
      fi ;;
    *) echo "MT_IMAGES must be public, local or auto" >&2; return 2 ;;
  esac
}

apt_mirror() {
  # The first Debian mirror apt is configured with (deb822 or one-line sources).
  local uri
  uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -1)
  [ -n "$uri" ] || uri=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | head -1)
  echo "${uri:-http://deb.debian.org/debian}"
}

build_base() {
  if ! "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    [ "$EUID" -eq 0 ] || { echo "debootstrap needs root" >&2; return 1; }
    local root="$STATE/rootfs" mirror
    mirror=$(apt_mirror)
    rm -rf "$root"
    mkdir -p "$STATE"
    echo "bootstrapping Debian bookworm (minbase) from $mirror"
    debootstrap --variant=minbase bookworm "$root" "$mirror" >"$STATE/debootstrap.log" 2>&1 \
      || { tail -20 "$STATE/debootstrap.log" >&2; return 1; }
    cat > "$root/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
SOURCES
    # Local builds only: trust what this host trusts (its egress may inspect TLS).
    mkdir -p "$root/etc/ssl"
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/host-ca-bundle.crt"
    # Slim, as Debian's -slim images are: no manuals, docs (licences kept) or translations,
    # now or in packages installed later; no package caches.
    cat > "$root/etc/dpkg/dpkg.cfg.d/slim" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
DPKG
    cat > "$root/etc/apt/apt.conf.d/slim" <<'APT'
APT::Install-Recommends "false";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
    find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/cache/apt/*.bin
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
    tar -C "$root" -c . | "$DOCKER" import \
      -c 'ENV SSL_CERT_FILE=/etc/ssl/host-ca-bundle.crt PIP_CERT=/etc/ssl/host-ca-bundle.crt REQUESTS_CA_BUNDLE=/etc/ssl/host-ca-bundle.crt' \
      -c 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$root"
  fi
  if ! "$DOCKER" image inspect "$PYTHON_IMAGE" >/dev/null 2>&1; then
    "$DOCKER" build -q -t "$PYTHON_IMAGE" --build-arg BASE_IMAGE="$BASE_IMAGE" \
      -f deploy/local-images/python.Dockerfile deploy/local-images >/dev/null
  fi
}

compose_files() {
  if [ "$1" = local ]; then
    echo "-f docker-compose.yml -f docker-compose.local.yml"
  else
    echo "-f docker-compose.yml"
  fi
}

# Compose v1 (Debian's docker-compose) applies `deploy:` (replicas, limits) only with
# --compatibility; v2 accepts the flag too.
compose() {
  local images=$1
  shift
  # shellcheck disable=SC2046 # word splitting of the file list is intended
  docker-compose --compatibility -p "${MT_PROJECT:-minitwitter}" $(compose_files "$images") "$@"
}

up() {
  start_engine
  local images
  images=$(which_images)
  [ "$images" = local ] && build_base
  for name in $(sed -n 's|^    file: ./.secrets/||p' docker-compose.yml); do
    [ -f ".secrets/$name" ] || { echo "missing .secrets/$name: run 'make secrets'" >&2; return 1; }
  done
  compose "$images" up -d --build --remove-orphans
  echo "waiting for every service to be healthy"
  local deadline=$((SECONDS + ${MT_UP_TIMEOUT:-300})) pending
  while :; do
    pending=$(compose "$images" ps -q | xargs -r "$DOCKER" inspect \
      -f '{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' \
      | awk '$2 != "healthy" && $2 != "exited" {print $1}')
    [ -z "$pending" ] && break
    if [ $SECONDS -ge $deadline ]; then
      echo "not healthy in time: $pending" >&2
      return 1
    fi
    sleep 2
  done
  local port=${NGINX_PORT:-8080} bind=${NGINX_BIND:-127.0.0.1}
  cat <<SUMMARY
Minitwitter is running ($images images, project ${MT_PROJECT:-minitwitter})
  API (nginx)    http://$bind:$port/function/<name>   health: http://$bind:$port/healthz
  system API     user 'admin', password in .secrets/basic-auth-password
SUMMARY
  if [ "$images" = local ]; then
    echo "  Grafana        left out: its image cannot be had here (no registry answers; Debian does not package it)"
    echo "  Ollama         the fake Ollama server (no Ollama image here): keyword verdicts once its model is pulled"
  else
    echo "  Grafana        http://${GRAFANA_BIND:-127.0.0.1}:${GRAFANA_PORT:-3000} (admin, .secrets/grafana-admin-password)"
  fi
  echo "  stop           make down   (make down DOWN_ARGS=-v also deletes the data volumes)"
}

run_tests() {
  local started=0
  if ! engine_up; then
    start_engine
    started=1
  fi
  local status=0 paths=(tests/containers)
  for arg in "$@"; do
    case "$arg" in tests/*) paths=() ;; esac  # the caller named the tests to run
  done
  MT_CONTAINER_TESTS=1 "${PYTHON:-.venv/bin/python}" -m pytest "${paths[@]}" "$@" || status=$?
  if [ "$started" = 1 ]; then
    # An engine this run started is ours: drop the layers the from-scratch rebuilds left untagged.
    "$DOCKER" image prune -f >/dev/null || true
    stop_engine
  fi
  return "$status"
}

case "${1:-}" in
  engine) start_engine ;;
  stop-engine) stop_engine ;;
  images) which_images ;;
  base) start_engine && build_base ;;
  compose) shift; compose "$(which_images)" "$@" ;;
  up) up ;;
  down) shift; engine_up || { echo "the Docker engine is not running: nothing to stop"; exit 0; }
        compose "$(which_images)" down --remove-orphans "$@" ;;
  test) shift; run_tests "$@" ;;
  *) echo "usage: $0 engine|stop-engine|images|base|compose ARGS|up|down [-v]|test ARGS" >&2; exit 2 ;;
esac
