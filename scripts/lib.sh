# Shared by the set-up scripts (sourced, not run).

# apt_mirror: the Debian mirror apt already uses, so that set-up reaches
# exactly what apt reaches. Empty lets debootstrap use its own default.
apt_mirror() {
	local m
	m=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
	[ -n "$m" ] || m=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
	echo "$m"
}
