#!/usr/bin/env bash
# Ensures the glibc sysroot the step runner is linked against and prints its
# directory: Debian bullseye's libc6-dev (glibc 2.31, whose symbols are
# versioned no higher than the floor the runner keeps, 2.17), so that the
# runner needs no newer glibc than its code asks for (the host's 2.36 would
# make it need 2.34). Used as `gcc --sysroot`; see scripts/build-runner.sh.
# Built once (needs root and debootstrap, which `make setup` installs), into
# a temporary directory renamed at the end, so that an interrupted run never
# leaves half a sysroot that counts as present. Quiet when it is there.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
DEV_DIR=${STEVEDORE_DEV_DIR:-/var/lib/stevedore-dev}
SUITE=bullseye
ARCH=$(dpkg --print-architecture)
BASE=$DEV_DIR/sysroot
ROOT=$BASE/$SUITE-$ARCH

say() { echo "sysroot: $*" >&2; }
die() { echo "sysroot: error: $*" >&2; exit 1; }

if [ -d "$ROOT" ]; then
	echo "$ROOT"
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	command -v sudo >/dev/null || die "$ROOT is missing and building it needs root (debootstrap)"
	# Without a terminal (tests) sudo must fail rather than wait for a password.
	[ -t 0 ] && nonint= || nonint=-n
	exec sudo $nonint env STEVEDORE_DEV_DIR="$DEV_DIR" "$0" "$@"
fi
command -v debootstrap >/dev/null || die "$ROOT is missing and building it needs debootstrap; run \`make setup\`"
mkdir -p "$BASE"
# One builder at a time (tests build bundles in parallel); the loser finds it built.
exec 9>"$BASE/.lock"
flock 9
if [ -d "$ROOT" ]; then
	echo "$ROOT"
	exit 0
fi
rm -rf "$BASE"/.tmp.* # left by an interrupted run; we hold the lock
tmp=$BASE/.tmp.$SUITE-$ARCH.$$
log=$BASE/$SUITE-$ARCH.log
say "debootstrap $SUITE with libc6-dev into $ROOT (once; log: $log)"
start=$SECONDS
# shellcheck disable=SC2046 # an empty mirror is no argument
if ! debootstrap --variant=minbase --include=libc6-dev "$SUITE" "$tmp" $(apt_mirror) >"$log" 2>&1; then
	tail -n 20 "$log" >&2
	rm -rf "$tmp"
	die "debootstrap $SUITE failed"
fi
rm -rf "$tmp"/var/cache/apt/* "$tmp"/var/lib/apt/lists/* "$tmp"/usr/share/{doc,man,info,locale}
# Absolute symbolic links (libm.so -> /lib/x86_64-linux-gnu/libm.so.6) would
# lead the linker to the host's libraries: make them relative to the sysroot.
while IFS= read -r -d '' link; do
	target=$(readlink "$link")
	case $target in /*) ln -sfn "$(realpath -m --relative-to="$(dirname "$link")" "$tmp$target")" "$link" ;; esac
done < <(find "$tmp" -type l -print0)
mv -T "$tmp" "$ROOT"
say "ready in $((SECONDS - start)) s ($(du -sh "$ROOT" | cut -f1))"
echo "$ROOT"
