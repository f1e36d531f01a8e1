#!/usr/bin/env bash
# Ensures helm, for `helm lint` and `helm template` of the chart
# (packaging/helm), and prints its path. Built from source with
# `go install` through the Go module proxy (no other download), once, into
# $STEVEDORE_DEV_DIR/bin; quiet when the right version is there. The one
# place helm's version and path live: `make setup` runs this, and the
# chart's test runs it with --where.
#
#   scripts/helm.sh           install when missing or another version; print the path
#   scripts/helm.sh --where   only print the path (it may not exist)
set -euo pipefail

VERSION=v3.22.0
DEV_DIR=${STEVEDORE_DEV_DIR:-/var/lib/stevedore-dev}
HELM=$DEV_DIR/bin/helm

say() { echo "helm: $*" >&2; }
die() { echo "helm: error: $*" >&2; exit 1; }

if [ "${1:-}" = --where ]; then
	echo "$HELM"
	exit 0
fi

GO=${GO:-go}
command -v "$GO" >/dev/null || GO=/usr/local/go/bin/go
command -v "$GO" >/dev/null || die "no go on PATH (nor /usr/local/go/bin/go) to build helm with"

# The module version go install recorded in the binary: exact, unlike
# `helm version`, which a source build may report as a bare major.minor.
installed() { [ -x "$HELM" ] && "$GO" version -m "$HELM" 2>/dev/null | awk '$1 == "mod" && $2 == "helm.sh/helm/v3" {print $3}'; }

if [ "$(installed || true)" = "$VERSION" ]; then
	echo "$HELM"
	exit 0
fi

say "building helm $VERSION with go install (a few minutes, once)"
SUDO=
[ -w "$DEV_DIR" ] || [ "$(id -u)" = 0 ] || SUDO=sudo
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
begin=$(date +%s)
# Built as the calling user (its module and build caches), then installed.
if ! CGO_ENABLED=0 GOBIN=$tmp "$GO" install "helm.sh/helm/v3/cmd/helm@$VERSION" >"$tmp/log" 2>&1; then
	cat "$tmp/log" >&2
	die "go install helm.sh/helm/v3/cmd/helm@$VERSION failed"
fi
$SUDO mkdir -p "$DEV_DIR/bin"
$SUDO install -m 0755 "$tmp/helm" "$HELM"
say "installed $HELM in $(($(date +%s) - begin)) s"
echo "$HELM"
