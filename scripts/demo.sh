#!/usr/bin/env bash
# `make demo`: an agent on loopback runs a real step in the bookworm fixture:
# it prints lines, sets an output variable, echoes a masked secret and exits
# non-zero; then the result is shown. Run after `make setup build`.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../internal/testenv/fixtures.env"
bin=$here/../bin
port=${STEVEDORE_DEMO_PORT:-10933}
demo=$(mktemp -d /tmp/stevedore-demo.XXXXXX)
chmod 755 "$demo"
agent_pid=
cleanup() {
	[ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
	rm -rf "$demo"
}
trap cleanup EXIT

client=$("$bin/stevedore" cert --state-dir "$demo/client" 2>/dev/null)
agent=$("$bin/stevedore" cert --state-dir "$demo/agent" 2>/dev/null)
echo "== agent $agent on 127.0.0.1:$port, trusting the client $client"
"$bin/stevedore" agent --state-dir "$demo/agent" --listen "127.0.0.1:$port" --trust "$client" \
	--log-level warn >"$demo/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 1 50); do
	(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
	kill -0 "$agent_pid" 2>/dev/null || { cat "$demo/agent.log" >&2; exit 1; }
	sleep 0.1
done

echo "== stevedore run: a step in $STEVEDORE_FIXTURE_BOOKWORM"
set +e
"$bin/stevedore" run --state-dir "$demo/client" --agent "127.0.0.1:$port" --agent-thumbprint "$agent" \
	--image "$STEVEDORE_FIXTURE_BOOKWORM" --pull always \
	--registry-user "$STEVEDORE_REGISTRY_USER" --registry-password "$STEVEDORE_REGISTRY_PASSWORD" \
	--var Environment=staging --sensitive ApiKey=demo-secret-1234 \
	--result "$demo/result.json" --script '
echo "deploying to $Environment from $(. /etc/os-release; echo "$PRETTY_NAME")"
for i in 1 2 3; do echo "step line $i"; done
echo "using api key $ApiKey"
echo "a warning on stderr" >&2
set_variable DeployedVersion 1.2.3
echo "release notes" > notes.txt && new_artifact notes.txt
echo "failing on purpose with exit code 3"
exit 3'
code=$?
set -e
echo "== exit code: $code"
echo "== result ($demo/result.json):"
cat "$demo/result.json"
[ "$code" = 3 ] || { echo "demo: expected exit code 3" >&2; cat "$demo/agent.log" >&2; exit 1; }
