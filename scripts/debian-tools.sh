#!/usr/bin/env bash
# Make sure the Debian tools a make target needs are installed: the one place that lists them.
#
#   scripts/debian-tools.sh test         # what `make test` needs
#   scripts/debian-tools.sh bench        # what `make bench` needs
#   scripts/debian-tools.sh containers   # what `make up` / `make test-containers` need
#
# Each line of a set is "command package": the command is looked up on PATH and in $TOOL_DIRS
# (default: where Debian installs programs, which a user's PATH may lack), the package is what
# provides it. When something is
# missing: as root with apt-get, one quiet, non-interactive `apt-get update` + `install`; otherwise
# one line naming the exact command to run, and exit status 1.
set -euo pipefail

test_tools=(
  "nginx nginx"                                   # tests/test_nginx.py: NGINX in front of two gateways
  "prometheus prometheus"                         # tests/test_monitoring.py: real scrapes, rules
  "promtool prometheus"                           # promtool check config / test rules
  "prometheus-redis-exporter prometheus-redis-exporter"
  "prometheus-postgres-exporter prometheus-postgres-exporter"
  "wrk wrk"                                       # tests/test_bench_harness.py drives wrk
  "ss iproute2"                                   # tests/test_gateway.py reads listening sockets
)
bench_tools=(
  "wrk wrk"
  "nginx nginx"                                   # the nginx-static yardstick
)
# Debian's Docker engine and Compose v1 (a `docker` CLI found on PATH may be a newer one without
# the compose plugin, so the engine is looked for as `dockerd`), and debootstrap for the local
# base image when no registry answers (scripts/containers.sh).
container_tools=(
  "dockerd docker.io"
  "docker-compose docker-compose"
  "debootstrap debootstrap"
)

case "${1:-}" in
  test) wanted=("${test_tools[@]}") ;;
  bench) wanted=("${bench_tools[@]}") ;;
  containers) wanted=("${container_tools[@]}") ;;
  *) echo "usage: $0 test|bench|containers" >&2; exit 2 ;;
esac

found() {
  command -v "$1" >/dev/null 2>&1 && return 0
  local dir
  for dir in ${TOOL_DIRS:-/usr/sbin /usr/bin}; do
    [ -x "$dir/$1" ] && return 0
  done
  return 1
}

missing=()
for line in "${wanted[@]}"; do
  read -r cmd pkg <<<"$line"
  if ! found "$cmd"; then
    case " ${missing[*]-} " in *" $pkg "*) ;; *) missing+=("$pkg") ;; esac
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

install_cmd="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$EUID" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "missing Debian packages: run 'sudo apt-get update && sudo $install_cmd' (or install them otherwise), then retry" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
