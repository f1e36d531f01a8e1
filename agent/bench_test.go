package agent_test

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/docker/docker/api/types/image"
	"google.golang.org/protobuf/types/known/durationpb"

	"stevedore/internal/testenv"

	pb "stevedore/proto/stevedore/v1"
)

// BenchmarkLineLatency measures how long a line takes from the runner
// recording it to a client long-polling GetStatus receiving it, for lines
// printed one at a time. Reported as mean and p99 milliseconds per line.
//
//	go test -run '^$' -bench LineLatency ./agent/
func BenchmarkLineLatency(b *testing.B) {
	ta := startAgent(b)
	tk := fmt.Sprintf("bench-%d", time.Now().UnixNano())
	script := fmt.Sprintf("for i in $(seq 1 %d); do echo $i; sleep 0.02; done", b.N)
	if _, err := ta.client.StartStep(context.Background(), &pb.StartStepRequest{Ticket: tk, Script: bash(script), Execution: host()}); err != nil {
		b.Fatal(err)
	}
	var lat []time.Duration
	var after uint64
	b.ResetTimer()
	for len(lat) < b.N {
		st, err := ta.client.GetStatus(context.Background(), &pb.GetStatusRequest{Ticket: tk, AfterSequence: after, Wait: durationpb.New(10 * time.Second)})
		if err != nil {
			b.Fatal(err)
		}
		now := time.Now()
		for _, l := range st.GetLines() {
			after = l.GetSequence()
			if l.GetSource() == pb.LogSource_LOG_SOURCE_STDOUT {
				lat = append(lat, now.Sub(l.GetTime().AsTime()))
			}
		}
		if st.GetState() == pb.StepState_STEP_STATE_COMPLETE {
			break
		}
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	var sum time.Duration
	for _, d := range lat {
		sum += d
	}
	if len(lat) > 0 {
		b.ReportMetric(float64(sum.Microseconds())/float64(len(lat))/1000, "ms-mean/line")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "ms-p99/line")
	}
	b.ReportMetric(0, "ns/op")
}

// BenchmarkStepStart measures a trivial container step from StartStep to
// COMPLETE on an image already on the worker, and on one removed before each
// run (pulled from the local registry: the bookworm fixture, 161 MB, one layer).
//
//	go test -run '^$' -bench StepStart -benchtime 5x ./agent/
func BenchmarkStepStart(b *testing.B) {
	cli, _ := testenv.Docker(b)
	testenv.Image(b, cli, testenv.Bookworm)
	ta := startAgent(b)
	exec := &pb.Execution{Target: &pb.Execution_Container{Container: &pb.ContainerExecution{
		Image: testenv.Bookworm, PullPolicy: pb.PullPolicy_PULL_POLICY_IF_NOT_PRESENT,
		Credentials: &pb.RegistryCredentials{Username: testenv.RegistryUser, Password: testenv.RegistryPassword}}}}
	for _, bc := range []struct {
		name   string
		remove bool
	}{{"prepulled", false}, {"uncached", true}} {
		b.Run(bc.name, func(b *testing.B) {
			for i := range b.N {
				if bc.remove {
					b.StopTimer()
					// The non-root fixture shares bookworm's layer: both go, or nothing is pulled.
					for _, ref := range []string{testenv.Bookworm, testenv.NonRoot} {
						cli.ImageRemove(context.Background(), ref, image.RemoveOptions{Force: true})
					}
					b.StartTimer()
				}
				tk := fmt.Sprintf("start-%s-%d-%d", bc.name, i, time.Now().UnixNano())
				run := ta.run(b, &pb.StartStepRequest{Ticket: tk, Script: bash("true"), Execution: exec})
				if run.final.GetOutcome() != pb.Outcome_OUTCOME_SUCCEEDED {
					b.Fatalf("%v %s", run.final.GetOutcome(), run.final.GetReason())
				}
				b.StopTimer()
				ta.complete(b, tk)
				b.StartTimer()
			}
		})
	}
	testenv.Image(b, cli, testenv.Bookworm)
	testenv.Image(b, cli, testenv.NonRoot)
}
