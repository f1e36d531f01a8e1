#!/usr/bin/env bash
# `make demo`: a server and a polling agent on loopback; a real step in the
# worker-tools fixture, submitted through the server's HTTP API: a script
# written against Octopus's bash helpers reads variables, uses jq, prints
# lines at Octopus's log levels, sets output variables (one sensitive),
# echoes a masked secret, collects an artifact and fails with a reason and
# a non-zero exit code; then the result and the server's record of the step
# are shown. Run after `make setup build`.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../internal/testenv/fixtures.env"
bin=$here/../bin
http=${STEVEDORE_DEMO_HTTP:-127.0.0.1:8080}
polling=${STEVEDORE_DEMO_POLLING:-127.0.0.1:10943}
demo=$(mktemp -d /tmp/stevedore-demo.XXXXXX)
chmod 755 "$demo"
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
	rm -rf "$demo"
}
trap cleanup EXIT
export ADMIN_USERNAME=admin ADMIN_PASSWORD=demo-password-not-secret
export STEVEDORE_USER=$ADMIN_USERNAME STEVEDORE_PASSWORD=$ADMIN_PASSWORD

server=$("$bin/stevedore" cert --state-dir "$demo/server" 2>/dev/null)
agent=$("$bin/stevedore" cert --state-dir "$demo/agent" 2>/dev/null)
echo "== server $server: API on $http, polling on $polling, trusting the agent $agent"
"$bin/stevedore" server --data-dir "$demo/server" --http "$http" --polling "$polling" --trust "$agent" \
	--log-level warn >"$demo/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
	curl -fsS "http://$http/healthz" >/dev/null 2>&1 && break
	kill -0 "${pids[0]}" 2>/dev/null || { cat "$demo/server.log" >&2; exit 1; }
	sleep 0.1
done
echo "== polling agent demo-worker (pool demo) dials the server"
"$bin/stevedore" agent --state-dir "$demo/agent" --server "$polling" --server-thumbprint "$server" \
	--name demo-worker --pool demo --log-level warn >"$demo/agent.log" 2>&1 &
pids+=($!)

echo "== stevedore run --server: a step in $STEVEDORE_FIXTURE_WORKER_TOOLS on the pool demo"
set +e
"$bin/stevedore" run --server "http://$http" --pool demo \
	--image "$STEVEDORE_FIXTURE_WORKER_TOOLS" --pull always \
	--registry-user "$STEVEDORE_REGISTRY_USER" --registry-password "$STEVEDORE_REGISTRY_PASSWORD" \
	--var Octopus.Environment.Name=staging --var Release.Manifest='{"version":"1.2.3","replicas":3}' \
	--sensitive ApiKey=demo-secret-1234 --verbose \
	--result "$demo/result.json" --script '
set -euo pipefail
environment=$(get_octopusvariable "Octopus.Environment.Name")
echo "deploying to $environment from $(. /etc/os-release; echo "$PRETTY_NAME")"
version=$(get_octopusvariable "Release.Manifest" | jq -r .version)
write_verbose "manifest: ${octopus_parameters[Release.Manifest]}"
for i in 1 2 3; do echo "step line $i"; done
echo "using api key $(get_octopusvariable ApiKey)"
echo "a line on stderr" >&2
write_warning "replicas: $(get_octopusvariable "Release.Manifest" | jq .replicas), fewer than 5"
set_octopusvariable "DeployedVersion" "$version"
set_octopusvariable "DeployToken" "$(openssl rand -hex 8)" -sensitive
echo "release notes for $version" > notes.txt && new_octopusartifact notes.txt
update_progress 90 "almost there"
write_highlight "deployed $version to $environment"
fail_step "failing on purpose: smoke test of $version"'
code=$?
set -e
echo "== exit code: $code"
echo "== result ($demo/result.json):"
cat "$demo/result.json"
[ "$code" = 1 ] || { echo "demo: expected exit code 1" >&2; cat "$demo/server.log" "$demo/agent.log" >&2; exit 1; }
ticket=$(sed -n 's/.*"ticket": "\(.*\)".*/\1/p' "$demo/result.json")
echo "== the server's record (GET /api/steps/$ticket):"
curl -fsS -u "$ADMIN_USERNAME:$ADMIN_PASSWORD" "http://$http/api/steps/$ticket"
echo "== the task log as text (GET /api/steps/$ticket/log?format=text):"
curl -fsS -u "$ADMIN_USERNAME:$ADMIN_PASSWORD" "http://$http/api/steps/$ticket/log?format=text"
