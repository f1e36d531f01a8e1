package agent

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// isoHarness drives an isolation from a test: each acquire runs in its own
// goroutine; granted reports which have returned nil.
type isoHarness struct {
	t      *testing.T
	m      *isolation
	result map[string]chan error
	cancel map[string]context.CancelFunc
	got    map[string]error
}

func newIsoHarness(t *testing.T) *isoHarness {
	return &isoHarness{t: t, m: newIsolation(), result: map[string]chan error{}, cancel: map[string]context.CancelFunc{}, got: map[string]error{}}
}

// ask starts an acquire of mutex name by ticket (exclusive: FULL) and
// waits until it has either got the mutex or queued.
func (h *isoHarness) ask(name, ticket string, exclusive bool, timeout time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	h.t.Cleanup(cancel)
	ch := make(chan error, 1)
	queued := make(chan struct{})
	h.result[ticket], h.cancel[ticket] = ch, cancel
	go func() {
		ch <- h.m.acquire(ctx, name, isoParty{ticket: ticket, stepName: "step " + ticket, exclusive: exclusive}, timeout,
			func([]isoParty, []isoParty) { close(queued) })
	}()
	select {
	case <-queued:
	case err := <-ch:
		h.got[ticket] = err
	case <-time.After(5 * time.Second):
		h.t.Fatalf("acquire %s neither returned nor queued", ticket)
	}
}

// settle collects every acquire that has returned by now.
func (h *isoHarness) settle() {
	time.Sleep(20 * time.Millisecond)
	for tk, ch := range h.result {
		select {
		case err := <-ch:
			h.got[tk] = err
		default:
		}
	}
}

func (h *isoHarness) granted() []string {
	h.settle()
	var out []string
	for tk, err := range h.got {
		if err == nil {
			out = append(out, tk)
		}
	}
	slices.Sort(out)
	return out
}

// TestIsolationQueue walks the reader/writer mutex through sequences of
// acquires, releases and cancels, checking who holds it after each.
func TestIsolationQueue(t *testing.T) {
	type op struct {
		do      string // "r", "w" (acquire shared or exclusive), "release", "cancel", "hold-w"
		ticket  string
		mutex   string
		granted []string // every ticket whose acquire has returned nil so far
	}
	tests := []struct {
		name string
		ops  []op
	}{
		{"readers share", []op{
			{do: "r", ticket: "r1", granted: []string{"r1"}},
			{do: "r", ticket: "r2", granted: []string{"r1", "r2"}},
		}},
		{"a writer excludes readers and writers", []op{
			{do: "w", ticket: "w1", granted: []string{"w1"}},
			{do: "r", ticket: "r1", granted: []string{"w1"}},
			{do: "w", ticket: "w2", granted: []string{"w1"}},
			{do: "release", ticket: "w1", granted: []string{"r1", "w1"}},
			{do: "release", ticket: "r1", granted: []string{"r1", "w1", "w2"}},
		}},
		{"a waiting writer is not starved by later readers", []op{
			{do: "r", ticket: "r1", granted: []string{"r1"}},
			{do: "w", ticket: "w1", granted: []string{"r1"}},
			{do: "r", ticket: "r2", granted: []string{"r1"}}, // fits beside r1, but w1 came first
			{do: "release", ticket: "r1", granted: []string{"r1", "w1"}},
			{do: "release", ticket: "w1", granted: []string{"r1", "r2", "w1"}},
		}},
		{"readers at the head are let in together", []op{
			{do: "w", ticket: "w1", granted: []string{"w1"}},
			{do: "r", ticket: "r1", granted: []string{"w1"}},
			{do: "r", ticket: "r2", granted: []string{"w1"}},
			{do: "w", ticket: "w2", granted: []string{"w1"}},
			{do: "release", ticket: "w1", granted: []string{"r1", "r2", "w1"}},
		}},
		{"a cancelled writer leaves the queue and lets readers in", []op{
			{do: "r", ticket: "r1", granted: []string{"r1"}},
			{do: "w", ticket: "w1", granted: []string{"r1"}},
			{do: "r", ticket: "r2", granted: []string{"r1"}},
			{do: "cancel", ticket: "w1", granted: []string{"r1", "r2"}},
		}},
		{"mutexes by other names are independent", []op{
			{do: "w", ticket: "w1", mutex: "a", granted: []string{"w1"}},
			{do: "w", ticket: "w2", mutex: "b", granted: []string{"w1", "w2"}},
			{do: "r", ticket: "r1", granted: []string{"r1", "w1", "w2"}},
		}},
		{"a reattached holder keeps the mutex", []op{
			{do: "hold-w", ticket: "old", granted: nil},
			{do: "r", ticket: "r1", granted: nil},
			{do: "release", ticket: "old", granted: []string{"r1"}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newIsoHarness(t)
			for i, o := range tt.ops {
				switch o.do {
				case "r", "w":
					h.ask(o.mutex, o.ticket, o.do == "w", 0)
				case "hold-w":
					h.m.hold(o.mutex, isoParty{ticket: o.ticket, exclusive: true})
				case "release":
					h.m.release(o.ticket)
				case "cancel":
					h.cancel[o.ticket]()
				}
				if got := h.granted(); !slices.Equal(got, o.granted) {
					t.Fatalf("after op %d (%s %s): granted %v, want %v", i, o.do, o.ticket, got, o.granted)
				}
			}
			if o := tt.ops[len(tt.ops)-1]; o.do == "cancel" {
				if err := h.got[o.ticket]; !errors.Is(err, context.Canceled) {
					t.Errorf("the cancelled acquire returned %v", err)
				}
			}
		})
	}
}

func TestIsolationWaitTimesOut(t *testing.T) {
	h := newIsoHarness(t)
	h.ask("deploy", "holder", true, 0)
	start := time.Now()
	err := h.m.acquire(context.Background(), "deploy", isoParty{ticket: "late", exclusive: false}, 200*time.Millisecond, func([]isoParty, []isoParty) {})
	if !errors.Is(err, errIsolationTimeout) {
		t.Fatalf("err %v, want errIsolationTimeout", err)
	}
	if took := time.Since(start); took < 200*time.Millisecond || took > 2*time.Second {
		t.Errorf("timed out after %s, want 200ms", took)
	}
	for _, want := range []string{`"deploy"`, "ticket holder", `step "step holder"`, "exclusive", "200ms"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not say %s", err, want)
		}
	}
	// The timed-out waiter left the queue: a reader after the release gets in.
	h.m.release("holder")
	h.ask("deploy", "next", false, 0)
	if got := h.granted(); !slices.Contains(got, "next") {
		t.Fatalf("granted %v after the holder left", got)
	}
	if len(h.m.holders("deploy")) != 1 {
		t.Errorf("holders %v", h.m.holders("deploy"))
	}
}
