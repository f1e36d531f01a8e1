package agent_test

import (
	"fmt"
	"testing"

	"stevedore/internal/testenv"
	pb "stevedore/proto/stevedore/v1"
)

// The worker-tools fixture is what deployment steps run in: each tool does
// real work in a step, not just print its version.
func TestWorkerToolsImageRunsItsTools(t *testing.T) {
	withImages(t, testenv.WorkerTools)
	ta := startAgent(t)
	tk := ticket(t)
	run := ta.run(t, &pb.StartStepRequest{Ticket: tk, Execution: inContainer(testenv.WorkerTools), Script: bash(`set -euo pipefail
echo '{"replicas":[2,3]}' | jq -c '.replicas | add'
printf abc | openssl dgst -sha256 -r | cut -d' ' -f1
git init -q repo && git -C repo -c user.email=ci@example.invalid -c user.name=ci commit -q --allow-empty -m release-1 && git -C repo log --format=%s
curl -fsS file:///etc/debian_version >/dev/null && echo curl-ok
python3 -c 'import json; print(json.dumps({"ok": True}))'
test -s /etc/ssl/certs/ca-certificates.crt && echo ca-ok`)})
	if exitCode(run.final) != 0 {
		t.Fatalf("exit %d (%s); stderr %q agent %q", exitCode(run.final), run.final.GetReason(), run.stderr, run.agent)
	}
	want := []string{"5", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "release-1", "curl-ok", `{"ok": true}`, "ca-ok"}
	if fmt.Sprint(run.stdout) != fmt.Sprint(want) {
		t.Errorf("stdout %q, want %q", run.stdout, want)
	}
	ta.complete(t, tk)
}
