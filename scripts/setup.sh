#!/usr/bin/env bash
# `make setup`: installs and starts what stevedore's build, tests and demo need:
# Debian packages, a Docker Engine, a local registry with htpasswd auth, and the
# fixture images in it. Idempotent, and quiet when everything is already there.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../internal/testenv/fixtures.env
. "$here/../internal/testenv/fixtures.env"

DEV_DIR=${STEVEDORE_DEV_DIR:-/var/lib/stevedore-dev}
LOG_DIR=$DEV_DIR/log
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo

say() { echo "setup: $*" >&2; }
die() { echo "setup: error: $*" >&2; exit 1; }

# Packages the build, the tests and the fixtures need, installed only when missing.
PACKAGES=(
	docker.io         # the Docker Engine (dockerd, containerd, runc, docker-init)
	docker-registry   # a real registry for pulls with and without credentials
	debootstrap       # fixture images from Debian's packages
	musl              # the musl loader for the Alpine-like fixture
	busybox-static    # the static userland of the musl and static fixtures
	apache2-utils     # htpasswd (bcrypt) for the registry
	protobuf-compiler libprotobuf-dev # make proto (protoc and the well-known types)
	gcc libc6-dev      # the step runner is a dynamically linked glibc executable (cgo)
	curl ca-certificates openssl iptables
)

install_packages() {
	local missing=() p
	for p in "${PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	say "installing ${missing[*]}"
	local log
	log=$(mktemp)
	if ! { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
		cat "$log" >&2
		rm -f "$log"
		die "apt-get could not install ${missing[*]}"
	fi
	rm -f "$log"
}

engine_up() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

start_engine() {
	engine_up && return 0
	if [ -n "${DOCKER_HOST:-}" ]; then
		die "DOCKER_HOST=$DOCKER_HOST does not answer; start that engine or unset DOCKER_HOST"
	fi
	say "starting dockerd (log: $LOG_DIR/dockerd.log)"
	$SUDO mkdir -p "$LOG_DIR"
	if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
		$SUDO systemctl start docker
	else
		$SUDO setsid -f dockerd >>"$LOG_DIR/dockerd.log" 2>&1 </dev/null
	fi
	local i
	for i in $(seq 1 60); do
		engine_up && return 0
		sleep 1
	done
	tail -n 20 "$LOG_DIR/dockerd.log" >&2 || true
	die "the Docker Engine did not answer a ping within 60 s"
}

registry_status() {
	curl -s -o /dev/null -w '%{http_code}' ${1:+-u "$1"} "http://$STEVEDORE_REGISTRY/v2/" 2>/dev/null || true
}

start_registry() {
	local creds="$STEVEDORE_REGISTRY_USER:$STEVEDORE_REGISTRY_PASSWORD"
	if [ "$(registry_status)" = 401 ] && [ "$(registry_status "$creds")" = 200 ]; then
		return 0
	fi
	local dir=$DEV_DIR/registry
	$SUDO mkdir -p "$dir/data" "$LOG_DIR"
	# bcrypt, the only scheme the registry accepts.
	htpasswd -Bbn "$STEVEDORE_REGISTRY_USER" "$STEVEDORE_REGISTRY_PASSWORD" | $SUDO tee "$dir/htpasswd" >/dev/null
	$SUDO tee "$dir/config.yml" >/dev/null <<-EOF
		version: 0.1
		log:
		  level: info
		  fields:
		    service: registry
		storage:
		  filesystem:
		    rootdirectory: $dir/data
		  delete:
		    enabled: true
		http:
		  addr: $STEVEDORE_REGISTRY
		auth:
		  htpasswd:
		    realm: stevedore-fixtures
		    path: $dir/htpasswd
	EOF
	# A registry answering with other credentials is ours from an older set-up.
	pkill -f "docker-registry serve $dir/config.yml" 2>/dev/null && sleep 1 || true
	say "starting the registry on $STEVEDORE_REGISTRY (log: $LOG_DIR/registry.log)"
	$SUDO setsid -f docker-registry serve "$dir/config.yml" >>"$LOG_DIR/registry.log" 2>&1 </dev/null
	local i
	for i in $(seq 1 30); do
		[ "$(registry_status "$creds")" = 200 ] && [ "$(registry_status)" = 401 ] && return 0
		sleep 0.5
	done
	tail -n 20 "$LOG_DIR/registry.log" >&2 || true
	die "the registry on $STEVEDORE_REGISTRY did not come up with htpasswd auth"
}

install_packages
start_engine
start_registry
STEVEDORE_DEV_DIR=$DEV_DIR "$here/fixtures.sh"
# The glibc sysroot `make build` links the step runner against, made here
# too so that a fresh machine pays for it once, in set-up.
STEVEDORE_DEV_DIR=$DEV_DIR "$here/sysroot.sh" >/dev/null
# PostgreSQL for the server's tests: its package, a cluster on the socket
# and 127.0.0.1 only, the test role and database (scripts/postgres.sh).
"$here/postgres.sh"
# helm, for the chart's `helm lint` and `helm template` test: built once
# with go install through the module proxy (scripts/helm.sh; about 3.5 min
# on 2 cores with cold caches), skipped when that version is there.
install_helm() { STEVEDORE_DEV_DIR=$DEV_DIR "$here/helm.sh" >/dev/null; }
install_helm
# Debian's Chromium, which the web page's tests drive headless (scripts/chromium.sh).
"$here/chromium.sh"
