package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"stevedore/internal/version"
	pb "stevedore/proto/stevedore/v1"
	"stevedore/server"
)

// otherProtocol is an agent that speaks another version of the wire contract.
type otherProtocol struct {
	pb.AgentServer
	protocol uint32
}

func (o otherProtocol) GetCapabilities(ctx context.Context, req *pb.GetCapabilitiesRequest) (*pb.Capabilities, error) {
	caps, err := o.AgentServer.GetCapabilities(ctx, req)
	if caps != nil {
		caps.ProtocolVersion, caps.AgentVersion = o.protocol, "9.9.9"
	}
	return caps, err
}

// A worker that speaks another wire protocol (an agent of another release,
// mid rolling upgrade) stays connected and listed, with the reason, but is
// given no step; the step waits, saying why, and runs on the first worker
// that speaks the server's protocol.
func TestWorkersOfAnotherProtocolGetNoSteps(t *testing.T) {
	for _, protocol := range []uint32{version.Protocol - 1, version.Protocol + 1} {
		t.Run(fmt.Sprintf("protocol %d", protocol), func(t *testing.T) {
			e := newEnv(t)
			a := e.api()
			e.pollingAgentServing("old", 2, e.addr, func(a pb.AgentServer) pb.AgentServer { return otherProtocol{a, protocol} })
			var old server.WorkerStatus
			for deadline := time.Now().Add(30 * time.Second); !old.Connected; time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the worker did not connect")
				}
				code, b := a.do("GET", "/api/workers", nil)
				var workers []server.WorkerStatus
				if code != http.StatusOK || json.Unmarshal(b, &workers) != nil {
					t.Fatalf("%d %s", code, b)
				}
				for _, w := range workers {
					if w.Name == "old" {
						old = w
					}
				}
			}
			if old.ProtocolVersion != protocol || !strings.Contains(old.Incompatible, "9.9.9") {
				t.Errorf("worker status %+v: want protocol %d and why it gets no steps", old, protocol)
			}
			rec, err := e.srv.Submit(server.SubmitRequest{Pool: "linux", Step: numbered(1, "0")})
			if err != nil {
				t.Fatal(err)
			}
			var waiting string
			for deadline := time.Now().Add(10 * time.Second); !strings.Contains(waiting, "wire protocol"); time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("the queued step waits for %q, want the protocol named", waiting)
				}
				st := a.step(rec.ID)
				if st.State != server.StateQueued {
					t.Fatalf("the step went %s on a worker of protocol %d", st.State, protocol)
				}
				waiting = st.WaitingFor
			}
			e.pollingAgent("current", 2)
			if _, final := e.waitComplete(rec.ID); final.Assigned != "current" || final.Outcome != "FAILED" {
				t.Fatalf("ran on %q with outcome %q, want the current worker and FAILED (exit 3)", final.Assigned, final.Outcome)
			}
		})
	}
}
