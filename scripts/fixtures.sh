#!/usr/bin/env bash
# Builds the fixture images from Debian's packages (never pulled from the
# internet) and pushes them to the local registry. A fixture already in the
# registry is skipped; one only in the local engine is pushed, not rebuilt.
# Names, registry and credentials: internal/testenv/fixtures.env.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../internal/testenv/fixtures.env
. "$here/../internal/testenv/fixtures.env"
# shellcheck source=lib.sh
. "$here/lib.sh"
DEV_DIR=${STEVEDORE_DEV_DIR:-/var/lib/stevedore-dev}
WORK=$DEV_DIR/fixtures
ARCH=$(uname -m)

say() { echo "fixtures: $*" >&2; }

in_registry() {
	local ref=$1 repo tag
	repo=${ref#"$STEVEDORE_REGISTRY"/}
	tag=${repo##*:}
	repo=${repo%:*}
	[ "$(curl -s -o /dev/null -w '%{http_code}' -u "$STEVEDORE_REGISTRY_USER:$STEVEDORE_REGISTRY_PASSWORD" \
		-H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
		"http://$STEVEDORE_REGISTRY/v2/$repo/manifests/$tag")" = 200 ]
}

in_engine() { docker image inspect "$1" >/dev/null 2>&1; }

# push REF: with a throw-away client config, so set-up never writes the
# fixture credentials into the user's own ~/.docker/config.json.
push() {
	local cfg
	cfg=$(mktemp -d)
	echo "$STEVEDORE_REGISTRY_PASSWORD" | DOCKER_CONFIG=$cfg docker login -u "$STEVEDORE_REGISTRY_USER" \
		--password-stdin "$STEVEDORE_REGISTRY" >/dev/null 2>"$cfg/login.err" || { cat "$cfg/login.err" >&2; exit 1; }
	DOCKER_CONFIG=$cfg docker push -q "$1" >/dev/null
	rm -rf "$cfg"
}

# import DIR REF [--change ...]: a root file system directory as an image.
import() {
	local dir=$1 ref=$2
	shift 2
	tar --numeric-owner -C "$dir" -c . | docker import "$@" - "$ref" >/dev/null
}

debian() { # debian SUITE REF [PACKAGES]
	local suite=$1 ref=$2 include=${3:-} root=$WORK/$1
	rm -rf "$root"
	mkdir -p "$root"
	say "debootstrap $suite (about 30 s)"
	debootstrap --variant=minbase ${include:+--include="$include"} "$suite" "$root" $(apt_mirror) >"$WORK/$suite.log" 2>&1 ||
		{ tail -n 20 "$WORK/$suite.log" >&2; exit 1; }
	rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
	import "$root" "$ref" --change 'CMD ["/bin/bash"]'
	rm -rf "$root"
}

# busybox_root DIR: a static busybox and its applets, nothing dynamic.
busybox_root() {
	local root=$1 applet
	rm -rf "$root"
	mkdir -p "$root"/{bin,etc,tmp,lib,root}
	cp /bin/busybox "$root/bin/busybox"
	for applet in $("$root/bin/busybox" --list); do
		[ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
	done
	chmod 1777 "$root/tmp"
}

build_bookworm() { debian bookworm "$STEVEDORE_FIXTURE_BOOKWORM" python3; }
build_bullseye() { debian bullseye "$STEVEDORE_FIXTURE_BULLSEYE" python3; }
# What deployment steps usually run in: a shell, python3 and the tools that
# talk to services and repositories.
build_worker_tools() {
	debian bookworm "$STEVEDORE_FIXTURE_WORKER_TOOLS" python3,curl,openssl,jq,git,ca-certificates
}

build_musl() {
	local root=$WORK/musl loader=ld-musl-$ARCH.so.1
	busybox_root "$root"
	# As Alpine lays it out: the loader is libc itself, and libc.musl-* links to it.
	cp "$(readlink -f "/lib/$loader")" "$root/lib/$loader"
	ln -s "$loader" "$root/lib/libc.musl-$ARCH.so.1"
	cat >"$root/etc/os-release" <<-EOF
		NAME="Alpine Linux"
		ID=alpine
		VERSION_ID=3.20.0
		PRETTY_NAME="Alpine Linux v3.20 (stevedore fixture)"
	EOF
	import "$root" "$STEVEDORE_FIXTURE_MUSL" --change 'CMD ["/bin/sh"]'
	rm -rf "$root"
}

build_static() {
	local root=$WORK/static
	busybox_root "$root"
	cat >"$root/etc/os-release" <<-EOF
		NAME="stevedore static fixture"
		ID=stevedore-static
		PRETTY_NAME="static busybox, no dynamic loader"
	EOF
	import "$root" "$STEVEDORE_FIXTURE_STATIC" --change 'CMD ["/bin/sh"]'
	rm -rf "$root"
}

build_nonroot() {
	ensure bookworm "$STEVEDORE_FIXTURE_BOOKWORM"
	local name=stevedore-fixture-nonroot-$$
	docker run --name "$name" "$STEVEDORE_FIXTURE_BOOKWORM" useradd --uid 1000 --create-home app >/dev/null
	docker commit \
		--change 'USER app' \
		--change 'WORKDIR /home/app' \
		--change 'ENTRYPOINT ["/bin/sh", "-c", "echo this entrypoint must be overridden >&2; exit 97"]' \
		--change 'CMD []' \
		"$name" "$STEVEDORE_FIXTURE_NONROOT" >/dev/null
	docker rm "$name" >/dev/null
}

# ensure NAME REF: REF in the registry (and usable by the engine), built when missing.
ensure() {
	local name=$1 ref=$2
	if in_registry "$ref"; then
		return 0
	fi
	if ! in_engine "$ref"; then
		mkdir -p "$WORK"
		"build_$name"
	fi
	say "pushing $ref"
	push "$ref"
}

ensure bookworm "$STEVEDORE_FIXTURE_BOOKWORM"
ensure bullseye "$STEVEDORE_FIXTURE_BULLSEYE"
ensure musl "$STEVEDORE_FIXTURE_MUSL"
ensure static "$STEVEDORE_FIXTURE_STATIC"
ensure nonroot "$STEVEDORE_FIXTURE_NONROOT"
ensure worker_tools "$STEVEDORE_FIXTURE_WORKER_TOOLS"
