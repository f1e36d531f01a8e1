#!/usr/bin/env bash
# Debian's Chromium, for the web page's browser tests (server/web_browser_test.go
# drives it headless with chromedp). Installed only when missing; about 30 s once
# from the package mirror, nothing when it is there.
set -euo pipefail

SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo

dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q 'install ok installed' && exit 0
echo "setup: installing chromium (the web page's browser tests)" >&2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive \
	apt-get install -y -qq --no-install-recommends chromium; } >"$log" 2>&1; then
	cat "$log" >&2
	echo "setup: error: apt-get could not install chromium" >&2
	exit 1
fi
