#!/usr/bin/env bash
# The one recipe for the tool bundle's step runner, used by `make build` and
# by the tests (internal/testenv): a dynamically linked glibc executable (cgo,
# external linking), linked against the sysroot of scripts/sysroot.sh so that
# it runs on glibc 2.17 and newer, not only on the build host's glibc.
#
#   scripts/build-runner.sh [--host-glibc] OUT [GO_LDFLAGS]
#
# --host-glibc links against the build host's own glibc instead (no sysroot):
# a runner that needs that glibc, for tests of the probe's rejection.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
host=false
if [ "${1:-}" = --host-glibc ]; then
	host=true
	shift
fi
[ $# -ge 1 ] || { echo "usage: $0 [--host-glibc] OUT [GO_LDFLAGS]" >&2; exit 2; }
out=$(realpath -m "$1") # before the cd below
ldflags="${2:-} -linkmode external"
# cgo's defaults, which setting CGO_CFLAGS/CGO_LDFLAGS would otherwise drop.
cflags=${CGO_CFLAGS:--O2 -g}
cldflags=${CGO_LDFLAGS:--O2 -g}
if ! $host; then
	sysroot=$("$here/sysroot.sh")
	# --sysroot alone is not enough with Debian's gcc: its own library
	# directory (/usr/lib/gcc/<triplet>/N/../../../<triplet>) comes before the
	# sysroot's and holds the host's libc.so and crt1.o. -B puts the
	# sysroot's start files and libraries first.
	cflags="$cflags --sysroot=$sysroot"
	cldflags="$cldflags --sysroot=$sysroot -B$sysroot/usr/lib/$(gcc -print-multiarch)"
fi
cd "$here/.."
CGO_ENABLED=1 CGO_CFLAGS=$cflags CGO_LDFLAGS=$cldflags \
	"${GO:-go}" build -ldflags "$ldflags" -o "$out" ./cmd/stevedore-step
