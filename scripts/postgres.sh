#!/usr/bin/env bash
# Part of `make setup` (scripts/setup.sh runs it): Debian's PostgreSQL for the
# server's tests. Installs `postgresql` when missing, makes sure a cluster
# exists and runs, listening on its Unix socket and 127.0.0.1:5432 only, and
# creates the test role (password, scram-sha-256 over TCP, may create
# databases) and its database, all named in internal/testenv/fixtures.env.
# Idempotent; quiet and one query long when everything is there.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../internal/testenv/fixtures.env
. "$here/../internal/testenv/fixtures.env"

CLUSTER=main
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo

say() { echo "setup: $*" >&2; }
die() { echo "setup: error: $*" >&2; exit 1; }

# Only PostgreSQL's own settings apply: the URL says where and as whom.
unset PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE PGSERVICE PGSSLMODE PGOPTIONS

# as_postgres runs a command as the clusters' owner, who may connect over
# the socket without a password (Debian's peer authentication).
as_postgres() {
	if [ "$(id -u)" = 0 ]; then
		runuser -u postgres -- "$@"
	else
		sudo -u postgres "$@"
	fi
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

install_postgres() {
	installed postgresql && return 0
	say "installing postgresql"
	local log
	log=$(mktemp)
	if ! { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends postgresql; } >"$log" 2>&1; then
		cat "$log" >&2
		rm -f "$log"
		die "apt-get could not install postgresql"
	fi
	rm -f "$log"
}

# The newest installed major version: 15 on Debian 12.
pg_version() {
	local v
	v=$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -n 1)
	[ -n "$v" ] || die "postgresql is installed but /usr/lib/postgresql has no version"
	echo "$v"
}

# The settings the tests rely on, as a drop-in of the cluster's conf.d
# (Debian's postgresql.conf includes it), so the packaged file stays as is:
# loopback only, never other addresses, on the port fixtures.env names.
conf_text() {
	cat <<-EOF
		# Written by stevedore's scripts/postgres.sh (make setup).
		listen_addresses = '$STEVEDORE_TEST_DB_HOST'
		port = $STEVEDORE_TEST_DB_PORT
	EOF
}

# ready: the test role reaches its database over TCP with its password, and
# the server listens where the drop-in says (it may predate the drop-in).
ready() {
	[ "$(psql "$STEVEDORE_TEST_DB_URL" -XAtqc 'SHOW listen_addresses' 2>/dev/null)" = "$STEVEDORE_TEST_DB_HOST" ]
}

# cluster_field N: field N of pg_lsclusters for our cluster (4: status,
# 7: log file); empty when the cluster does not exist.
cluster_field() {
	pg_lsclusters -h 2>/dev/null | awk -v v="$1" -v c="$CLUSTER" -v f="$2" '$1 == v && $2 == c {print $f}'
}

wait_ready() {
	local v=$1 i
	for i in $(seq 1 60); do
		if pg_isready -q -p "$STEVEDORE_TEST_DB_PORT" &&
			pg_isready -q -h "$STEVEDORE_TEST_DB_HOST" -p "$STEVEDORE_TEST_DB_PORT"; then
			return 0
		fi
		sleep 0.5
	done
	local log
	log=$(cluster_field "$v" 7)
	[ -n "$log" ] && tail -n 20 "$log" >&2
	die "PostgreSQL $v/$CLUSTER does not accept connections on its socket and $STEVEDORE_TEST_DB_HOST:$STEVEDORE_TEST_DB_PORT within 30 s (log: ${log:-none})"
}

start_cluster() {
	local v=$1 conf=/etc/postgresql/$1/$CLUSTER/conf.d/stevedore.conf changed=
	if [ -z "$(cluster_field "$v" 4)" ]; then
		say "creating the PostgreSQL cluster $v/$CLUSTER"
		$SUDO pg_createcluster "$v" "$CLUSTER" >/dev/null
	fi
	if [ "$(cat "$conf" 2>/dev/null)" != "$(conf_text)" ]; then
		$SUDO mkdir -p "$(dirname "$conf")"
		conf_text | $SUDO tee "$conf" >/dev/null
		changed=1
	fi
	# Debian's clusters include conf.d; one made without it is told to.
	local main=/etc/postgresql/$v/$CLUSTER/postgresql.conf
	if ! grep -Eq "^[[:space:]]*include_dir[[:space:]]*=?[[:space:]]*'conf\.d'" "$main"; then
		echo "include_dir = 'conf.d'" | $SUDO tee -a "$main" >/dev/null
		changed=1
	fi
	# Password logins from loopback, which Debian's pg_hba.conf allows
	# already; added only to one that does not.
	local hba=/etc/postgresql/$v/$CLUSTER/pg_hba.conf
	if ! grep -Eq '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+(scram-sha-256|md5)' "$hba"; then
		echo "host all all 127.0.0.1/32 scram-sha-256" | $SUDO tee -a "$hba" >/dev/null
		changed=1
	fi
	local log
	log=$(cluster_field "$v" 7)
	# pg_ctlcluster, as Debian means clusters to be run: it hands over to
	# systemd where systemd runs, and otherwise starts the postmaster in a
	# session of its own (pg_ctl detaches it), logging to the cluster's log.
	case "$(cluster_field "$v" 4)" in
	online)
		if [ -n "$changed" ]; then
			say "restarting PostgreSQL $v/$CLUSTER for its new settings (log: $log)"
			$SUDO pg_ctlcluster "$v" "$CLUSTER" restart || { tail -n 20 "$log" >&2; die "pg_ctlcluster $v $CLUSTER restart failed"; }
		fi
		;;
	*)
		say "starting PostgreSQL $v/$CLUSTER (log: $log)"
		$SUDO pg_ctlcluster "$v" "$CLUSTER" start || { tail -n 20 "$log" >&2; die "pg_ctlcluster $v $CLUSTER start failed"; }
		;;
	esac
	wait_ready "$v"
}

# The test role and its database. Values go in as psql variables, quoted by
# psql (:'name' as a literal, :"name" as an identifier), never spliced in.
create_role_and_db() {
	say "creating the PostgreSQL role $STEVEDORE_TEST_DB_USER and database $STEVEDORE_TEST_DB_NAME"
	as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$STEVEDORE_TEST_DB_PORT" \
		-v user="$STEVEDORE_TEST_DB_USER" -v pw="$STEVEDORE_TEST_DB_PASSWORD" -v db="$STEVEDORE_TEST_DB_NAME" >/dev/null <<-'SQL'
		SET password_encryption = 'scram-sha-256';
		SELECT format('CREATE ROLE %I', :'user') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'user') \gexec
		-- CREATEDB: each test gets a database of its own (testenv.Postgres).
		ALTER ROLE :"user" WITH LOGIN CREATEDB PASSWORD :'pw';
		SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'user') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
	SQL
}

install_postgres
v=$(pg_version)
conf=/etc/postgresql/$v/$CLUSTER/conf.d/stevedore.conf
if [ "$(cat "$conf" 2>/dev/null)" = "$(conf_text)" ] && ready; then
	exit 0
fi
start_cluster "$v"
ready || create_role_and_db
ready || die "the test role cannot reach $STEVEDORE_TEST_DB_NAME on $STEVEDORE_TEST_DB_HOST:$STEVEDORE_TEST_DB_PORT with its password (check /etc/postgresql/$v/$CLUSTER/pg_hba.conf)"
