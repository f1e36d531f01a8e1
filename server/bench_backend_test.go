package server_test

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"stevedore/internal/testenv"
	pb "stevedore/proto/stevedore/v1"
	"stevedore/server"
)

// BenchmarkBackend runs one server node on each store backend, bbolt and
// PostgreSQL, and two nodes on one PostgreSQL database, in one run, and reports PostgreSQL's figures as ratios of
// bbolt's (the sub-benchmark "ratios"); only the ratios mean anything on
// a shared machine:
//
//	go test -run '^$' -bench Backend -benchtime 5x ./server/
//
// The backend is each case's, whatever STEVEDORE_TEST_BACKEND says; the
// PostgreSQL case skips where there is none (outside CI). Each case has
// benchAgents polling agents of benchSlots slots, on the pool "linux".
//
// throughput: an op is benchBatch trivial host steps submitted by
// benchSubmitters goroutines at once, then waited for until all complete;
// steps/s is over all the ops.
//
// pickup: an op is benchPickups steps submitted one after the other, each
// once the last completed, so every step meets free slots; pickup-ms (p50,
// p95) is from Submit returning to the agent's StartStep for the step:
// the queue read, the dispatch write, the request's opening and the call
// over the polling connection. It is taken on the agent, not from
// StepRecord.StartedAt, which dispatch sets before its own store write
// and before StartStep leaves the server.
func BenchmarkBackend(b *testing.B) {
	results := map[string]map[string]float64{} // case, metric: value
	for _, c := range backendCases {
		b.Run(c.name, func(b *testing.B) {
			b.Run("throughput", func(b *testing.B) { record(results, c.name, benchThroughput(b, c)) })
			b.Run("pickup", func(b *testing.B) { record(results, c.name, benchPickup(b, c)) })
		})
	}
	// The ratios as a last sub-benchmark: a parent's own log is not
	// printed without -v, a sub-benchmark's is.
	b.Run("ratios", func(b *testing.B) {
		for b.Loop() { // with b.Loop the function runs once, whatever -benchtime
		}
		base := results["bbolt"]
		if base == nil {
			b.Skip("bbolt did not run")
		}
		b.ReportMetric(0, "ns/op")
		for _, c := range backendCases {
			if c.name == "bbolt" || results[c.name] == nil {
				continue // skipped, or left out by -bench
			}
			for _, metric := range slices.Sorted(maps.Keys(results[c.name])) {
				v := results[c.name][metric]
				b.ReportMetric(v/base[metric], c.name+"/bbolt-"+metric)
				b.Logf("%s/bbolt %s: %.3f (%.4g / %.4g)", c.name, metric, v/base[metric], v, base[metric])
			}
		}
	})
}

// backendCase is a store backend and the servers (nodes) that share it.
type backendCase struct {
	name, backend string
	// nodes: servers sharing the backend (several only on PostgreSQL).
	nodes int
}

var backendCases = []backendCase{
	{"bbolt", testenv.BackendBolt, 1},
	{"postgres", testenv.BackendPostgres, 1},
	// Two nodes on one database, the agents spread over them and the
	// steps submitted through both in turn.
	{"postgres-2-nodes", testenv.BackendPostgres, 2},
}

const (
	benchAgents, benchSlots = 4, 4
	benchBatch              = 32
	benchSubmitters         = 4
	benchPickups            = 10
)

var benchStep = &pb.StartStepRequest{Execution: &pb.Execution{Target: &pb.Execution_Host{Host: &pb.HostExecution{}}},
	Script: &pb.Script{Syntax: pb.Syntax_SYNTAX_BASH, Body: "echo one line"}}

// benchCluster is a case's servers and its agents, which note when each
// step's StartStep reaches them.
type benchCluster struct {
	b     *testing.B
	nodes []*env
	mu    sync.Mutex
	start map[string]time.Time // ticket: the first StartStep's arrival
}

func newBenchCluster(b *testing.B, c backendCase) *benchCluster {
	backend := server.NewTestBackendFor(b, c.backend)
	// Several nodes share the database, the master key and the task logs'
	// and artifacts' directories, as a deployment of several nodes does.
	shared := b.TempDir()
	cl := &benchCluster{b: b, start: map[string]time.Time{}}
	for n := range c.nodes {
		var opts []func(*server.Config)
		if c.nodes > 1 {
			opts = append(opts, func(cfg *server.Config) {
				cfg.Node, cfg.MasterKey = fmt.Sprintf("n%d", n+1), "c3RldmVkb3JlLWJlbmNoIQ=="
				cfg.TaskLogsDir, cfg.ArtifactsDir = filepath.Join(shared, "taskLogs"), filepath.Join(shared, "artifacts")
			})
		}
		e := newEnvOn(b, backend, opts...)
		// Info logs a few lines a step, all printed for a benchmark:
		// noise, and a cost that is the test log's, not the server's.
		e.log.SetLevel(hclog.Warn)
		cl.nodes = append(cl.nodes, e)
	}
	for i := range benchAgents { // spread over the nodes
		e := cl.nodes[i%len(cl.nodes)]
		e.pollingAgentServing(fmt.Sprintf("w%d", i+1), benchSlots, e.addr, func(a pb.AgentServer) pb.AgentServer { return timedAgent{a, cl} })
	}
	cl.waitConnected()
	// Warm up (the runner's first exec, the first queries) outside the
	// measure.
	cl.run(cl.mustSubmit(0))
	return cl
}

// timedAgent is an agent that tells its cluster when a StartStep arrives.
type timedAgent struct {
	pb.AgentServer
	cl *benchCluster
}

func (a timedAgent) StartStep(ctx context.Context, req *pb.StartStepRequest) (*pb.StepStatus, error) {
	now := time.Now()
	a.cl.mu.Lock()
	if _, ok := a.cl.start[req.GetTicket()]; !ok { // a retried StartStep is not the pickup
		a.cl.start[req.GetTicket()] = now
	}
	a.cl.mu.Unlock()
	return a.AgentServer.StartStep(ctx, req)
}

func (cl *benchCluster) waitConnected() {
	deadline := time.Now().Add(time.Minute)
	connected := 0
	for _, e := range cl.nodes {
		for {
			n := 0
			for _, w := range e.srv.Workers() {
				if w.Connected {
					n++
				}
			}
			if n == benchAgents/len(cl.nodes) {
				connected += n
				break
			}
			if time.Now().After(deadline) {
				cl.b.Fatalf("%d of %d agents connected to a node", n, benchAgents/len(cl.nodes))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if connected != benchAgents {
		cl.b.Fatalf("%d of %d agents connected", connected, benchAgents)
	}
}

// submit queues the benchmark's step on node i (mod the nodes); safe on
// any goroutine.
func (cl *benchCluster) submit(i int) (string, error) {
	rec, err := cl.nodes[i%len(cl.nodes)].srv.Submit(server.SubmitRequest{Pool: "linux", Step: benchStep})
	if err != nil {
		return "", fmt.Errorf("submit step %d: %w", i, err)
	}
	return rec.ID, nil
}

// mustSubmit is submit on the benchmark's goroutine.
func (cl *benchCluster) mustSubmit(i int) string {
	id, err := cl.submit(i)
	if err != nil {
		cl.b.Fatal(err)
	}
	return id
}

// run waits for the step to complete; it must succeed.
func (cl *benchCluster) run(id string) {
	if _, final := cl.nodes[0].waitComplete(id); final.Outcome != "SUCCEEDED" {
		cl.b.Fatalf("final %+v", final)
	}
}

func (cl *benchCluster) startedAt(id string) time.Time {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	t, ok := cl.start[id]
	if !ok {
		cl.b.Fatalf("step %s completed without a StartStep on an agent", id)
	}
	return t
}

func benchThroughput(b *testing.B, c backendCase) map[string]float64 {
	cl := newBenchCluster(b, c)
	steps := 0
	for b.Loop() {
		ids := make([]string, benchBatch)
		errs := make(chan error, benchBatch)
		var wg sync.WaitGroup
		for g := range benchSubmitters {
			wg.Go(func() {
				for i := g; i < benchBatch; i += benchSubmitters {
					id, err := cl.submit(i)
					if err != nil {
						errs <- err
						return
					}
					ids[i] = id
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err) // b.Fatal belongs to the benchmark's goroutine
		}
		for _, id := range ids {
			cl.run(id)
		}
		steps += benchBatch
	}
	m := map[string]float64{"steps/s": float64(steps) / b.Elapsed().Seconds()}
	b.ReportMetric(m["steps/s"], "steps/s")
	return m
}

func benchPickup(b *testing.B, c backendCase) map[string]float64 {
	cl := newBenchCluster(b, c)
	var pickups []time.Duration
	for b.Loop() {
		for i := range benchPickups {
			id := cl.mustSubmit(i)
			submitted := time.Now()
			cl.run(id)
			pickups = append(pickups, cl.startedAt(id).Sub(submitted))
		}
	}
	slices.Sort(pickups)
	m := map[string]float64{"pickup-p50-ms": ms(quantile(pickups, 0.5)), "pickup-p95-ms": ms(quantile(pickups, 0.95))}
	for name, v := range m {
		b.ReportMetric(v, name)
	}
	return m
}

// quantile is the q-quantile of sorted durations, nearest rank.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// record keeps a sub-benchmark's figures for the ratios; with b.Loop each
// runs once, so these are its only ones.
func record(results map[string]map[string]float64, name string, m map[string]float64) {
	if results[name] == nil {
		results[name] = map[string]float64{}
	}
	for k, v := range m {
		results[name][k] = v
	}
}
