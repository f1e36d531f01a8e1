package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
)

// fakeEngine stands in for the engine at the coordinator's boundary, so
// these tests can hold a pull open, stall it or fail it at will. The tests
// against the real engine and registry are in coordinator_real_test.go.
type fakeEngine struct {
	mu      sync.Mutex
	images  map[string]image.InspectResponse // by reference
	pulls   atomic.Int32
	pull    func(ctx context.Context, ref string) (io.ReadCloser, error)
	removed []string
}

func newFakeEngine() *fakeEngine { return &fakeEngine{images: map[string]image.InspectResponse{}} }

func (f *fakeEngine) ImagePull(ctx context.Context, ref string, _ image.PullOptions) (io.ReadCloser, error) {
	f.pulls.Add(1)
	rc, err := f.pull(ctx, ref)
	if err != nil {
		return nil, err
	}
	// As in the engine, the image exists once its pull stream completes.
	return &completing{ReadCloser: rc, done: func() { f.add(ref, "sha256:pulled-"+ref, 1000) }}, nil
}

type completing struct {
	io.ReadCloser
	done func()
}

func (c *completing) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	if errors.Is(err, io.EOF) {
		c.done()
	}
	return n, err
}

func (f *fakeEngine) add(ref, id string, size int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.images[ref] = image.InspectResponse{ID: id, Size: size}
}

func (f *fakeEngine) ImageInspect(_ context.Context, ref string, _ ...client.ImageInspectOption) (image.InspectResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if img, ok := f.images[ref]; ok {
		return img, nil
	}
	return image.InspectResponse{}, cerrdefs.ErrNotFound
}

func (f *fakeEngine) ImageRemove(_ context.Context, ref string, _ image.RemoveOptions) ([]image.DeleteResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.images, ref)
	f.removed = append(f.removed, ref)
	return nil, nil
}

// stream is a pull progress stream that ends when release is closed.
func stream(ctx context.Context, release <-chan struct{}) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() {
		fmt.Fprintln(pw, `{"status":"Downloading","id":"l1","progressDetail":{"current":10,"total":100}}`)
		select {
		case <-release:
			fmt.Fprintln(pw, `{"status":"Pull complete","id":"l1"}`)
			pw.Close()
		case <-ctx.Done():
			pw.CloseWithError(ctx.Err())
		}
	}()
	return pr
}

func newTestCoordinator(t *testing.T, eng Engine, mod func(*Options)) *Coordinator {
	t.Helper()
	store, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	opt := Options{Engine: eng, Store: store, Backoff: 10 * time.Millisecond, StallTimeout: time.Minute}
	if mod != nil {
		mod(&opt)
	}
	return NewCoordinator(opt)
}

// An image on a registry nobody listens on: Access fails as an outage.
const unreachable = "127.0.0.1:1/test/img:1"

func TestSharedPullOnePullForManyWaiters(t *testing.T) {
	eng := newFakeEngine()
	release := make(chan struct{})
	eng.pull = func(ctx context.Context, _ string) (io.ReadCloser, error) { return stream(ctx, release), nil }
	c := newTestCoordinator(t, eng, nil)
	const n = 20
	var wg sync.WaitGroup
	var progressed atomic.Int32
	errs := make([]error, n)
	leaving, cancel := context.WithCancel(context.Background())
	for i := range n {
		ctx := context.Background()
		if i == 0 {
			ctx = leaving // this waiter gives up; the others must not notice
		}
		wg.Go(func() {
			l, err := c.Ensure(ctx, Request{Image: unreachable, Progress: func(Progress) { progressed.Add(1) }})
			errs[i] = err
			l.Release()
		})
	}
	waitFor(t, func() bool { return progressed.Load() >= n-1 })
	cancel()
	time.Sleep(50 * time.Millisecond)
	close(release)
	wg.Wait()
	if got := eng.pulls.Load(); got != 1 {
		t.Errorf("%d pulls for %d waiters, want 1", got, n)
	}
	if !errors.Is(errs[0], context.Canceled) {
		t.Errorf("the waiter that left got %v", errs[0])
	}
	for i, err := range errs[1:] {
		if err != nil {
			t.Errorf("waiter %d: %v", i+1, err)
		}
	}
}

func TestPullStopsWhenEveryWaiterLeaves(t *testing.T) {
	eng := newFakeEngine()
	stopped := make(chan struct{})
	eng.pull = func(ctx context.Context, _ string) (io.ReadCloser, error) {
		go func() { <-ctx.Done(); close(stopped) }()
		return stream(ctx, nil), nil
	}
	c := newTestCoordinator(t, eng, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { _, err := c.Ensure(ctx, Request{Image: unreachable}); done <- err }()
	waitFor(t, func() bool { return eng.pulls.Load() == 1 })
	cancel()
	<-done
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("the pull went on after its last waiter left")
	}
}

func TestStalledPullIsCancelledAndRetried(t *testing.T) {
	eng := newFakeEngine()
	eng.pull = func(ctx context.Context, _ string) (io.ReadCloser, error) {
		if eng.pulls.Load() < 3 {
			return stream(ctx, nil), nil // one message, then nothing: stalled
		}
		done := make(chan struct{})
		close(done)
		return stream(ctx, done), nil
	}
	var messages []string
	var mu sync.Mutex
	c := newTestCoordinator(t, eng, func(o *Options) { o.StallTimeout = 200 * time.Millisecond; o.Retries = 3 })
	l, err := c.Ensure(context.Background(), Request{Image: unreachable, Progress: func(p Progress) {
		mu.Lock()
		defer mu.Unlock()
		if p.Message != "" {
			messages = append(messages, p.Message)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
	if eng.pulls.Load() != 3 || len(messages) != 2 || !strings.Contains(messages[0], "no progress") {
		t.Errorf("pulls %d, messages %q", eng.pulls.Load(), messages)
	}
}

func TestStallWithoutRetriesFails(t *testing.T) {
	eng := newFakeEngine()
	eng.pull = func(ctx context.Context, _ string) (io.ReadCloser, error) { return stream(ctx, nil), nil }
	c := newTestCoordinator(t, eng, func(o *Options) { o.StallTimeout = 100 * time.Millisecond; o.Retries = -1 })
	_, err := c.Ensure(context.Background(), Request{Image: unreachable})
	if !errors.Is(err, ErrStalled) {
		t.Fatalf("err %v, want ErrStalled", err)
	}
}

func TestPolicies(t *testing.T) {
	tests := []struct {
		name      string
		image     string
		present   bool
		policy    PullPolicy
		wantPulls int32
		wantErr   error
	}{
		{"never, absent", unreachable, false, PullNever, 0, ErrNotPresent},
		{"never, present", unreachable, true, PullNever, 0, nil},
		{"if-not-present, present", unreachable, true, PullIfNotPresent, 0, nil},
		{"if-not-present, absent", unreachable, false, PullIfNotPresent, 1, nil},
		{"always, present", unreachable, true, PullAlways, 1, nil},
		{"default for a fixed tag, present", unreachable, true, PullDefault, 0, nil},
		{"default for latest, present", "127.0.0.1:1/test/img:latest", true, PullDefault, 1, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			eng := newFakeEngine()
			done := make(chan struct{})
			close(done)
			eng.pull = func(ctx context.Context, _ string) (io.ReadCloser, error) { return stream(ctx, done), nil }
			if tt.present {
				eng.add(tt.image, "sha256:present", 1)
			}
			c := newTestCoordinator(t, eng, nil)
			l, err := c.Ensure(context.Background(), Request{Image: tt.image, Policy: tt.policy})
			if !errors.Is(err, tt.wantErr) || eng.pulls.Load() != tt.wantPulls {
				t.Fatalf("err %v pulls %d, want %v %d", err, eng.pulls.Load(), tt.wantErr, tt.wantPulls)
			}
			l.Release()
		})
	}
}

func TestAllowedImages(t *testing.T) {
	globs := []string{"127.0.0.1:5001/fixtures/*", "debian:*"}
	tests := []struct {
		image string
		ok    bool
	}{
		{"127.0.0.1:5001/fixtures/bookworm:1", true},
		{"127.0.0.1:5001/other/bookworm:1", false},
		{"debian:12", true},
		{"docker.io/library/debian:12", true},
		{"alpine:3", false},
	}
	for _, tt := range tests {
		err := CheckAllowed(globs, tt.image)
		if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrNotAllowed)) {
			t.Errorf("CheckAllowed(%s) = %v, want ok=%v", tt.image, err, tt.ok)
		}
	}
}

func TestCollect(t *testing.T) {
	eng := newFakeEngine()
	c := newTestCoordinator(t, eng, func(o *Options) { o.GC = GCOptions{MinAge: time.Hour, Keep: 1} })
	old := time.Now().Add(-3 * time.Hour)
	for i, name := range []string{"oldest", "pinned", "leased", "recent"} {
		ref := "127.0.0.1:1/test/" + name + ":1"
		id := fmt.Sprintf("sha256:%d", i)
		eng.add(ref, id, 100)
		if err := c.opt.Store.Pulled(ref, id, "", 100, "k"); err != nil {
			t.Fatal(err)
		}
		rec := c.opt.Store.recs[id]
		rec.LastUsed = old.Add(time.Duration(i) * time.Minute)
		if name == "recent" {
			rec.LastUsed = time.Now()
		}
	}
	eng.add("127.0.0.1:1/test/foreign:1", "sha256:foreign", 100) // not pulled by the agent
	c.SetPinned([]string{"127.0.0.1:1/test/pinned:1"})
	lease := c.lease("sha256:2", "127.0.0.1:1/test/leased:1")
	removed, err := c.Collect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(removed) != "[sha256:0]" {
		t.Fatalf("removed %v, want only the oldest unpinned, unleased image", removed)
	}
	lease.Release()
	c.opt.Store.recs["sha256:2"].LastUsed = old // taking the lease marked it used now
	removed, _ = c.Collect(context.Background())
	if fmt.Sprint(removed) != "[sha256:2]" {
		t.Fatalf("after the lease ended, removed %v", removed)
	}
	if _, err := eng.ImageInspect(context.Background(), "127.0.0.1:1/test/foreign:1"); err != nil {
		t.Error("an image the agent did not pull was removed")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestProgressLine(t *testing.T) {
	tests := []struct {
		p    Progress
		want string
	}{
		{Progress{Image: "img", LayersDone: 1, LayersTotal: 3, BytesDone: 41_200_000, BytesTotal: 120_000_000}, "pulling img: 1/3 layers, 41.2 MB of 120.0 MB"},
		{Progress{Image: "img", LayersTotal: 1, BytesDone: 500, BytesTotal: 1000, ETA: 90 * time.Second}, "pulling img: 0/1 layers, 500 B of 1.0 kB, about 1m30s left"},
		{Progress{Image: "img", Message: "attempt 1 failed; retrying in 1s"}, "pulling img: attempt 1 failed; retrying in 1s"},
	}
	for _, tt := range tests {
		if got := tt.p.String(); got != tt.want {
			t.Errorf("%q, want %q", got, tt.want)
		}
	}
}

// A registry answering 429 with Retry-After is retried no sooner than it asks.
func TestRateLimitedPullWaitsRetryAfter(t *testing.T) {
	var heads atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		if heads.Add(1) == 1 {
			w.Header().Set("Retry-After", "2")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		w.WriteHeader(http.StatusInternalServerError)
	}))
	defer srv.Close()
	img := strings.TrimPrefix(srv.URL, "http://") + "/test/limited:1"
	eng := newFakeEngine()
	eng.pull = func(ctx context.Context, _ string) (io.ReadCloser, error) {
		if eng.pulls.Load() == 1 {
			return nil, errors.New("toomanyrequests") // as the engine reports it: no class
		}
		done := make(chan struct{})
		close(done)
		return stream(ctx, done), nil
	}
	c := newTestCoordinator(t, eng, func(o *Options) { o.Backoff = 10 * time.Millisecond })
	start := time.Now()
	l, err := c.Ensure(context.Background(), Request{Image: img})
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
	if took := time.Since(start); took < 2*time.Second || eng.pulls.Load() != 2 {
		t.Errorf("retried after %s with %d pulls; the registry asked for 2s", took, eng.pulls.Load())
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"3", 3 * time.Second, true},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{"", 0, false},
		{"soon", 0, false},
	}
	for _, tt := range tests {
		got, ok := parseRetryAfter(tt.in, now)
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseRetryAfter(%q) = %s %v", tt.in, got, ok)
		}
	}
}

// A pull's collection may run before its waiters take their leases; the
// image they waited for must survive it.
func TestCollectionAfterAPullSparesItsWaiters(t *testing.T) {
	eng := newFakeEngine()
	eng.pull = func(context.Context, string) (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader("{}\n")), nil
	}
	c := newTestCoordinator(t, eng, func(o *Options) { o.GC = GCOptions{MinAge: time.Nanosecond, MaxBytes: 1} })
	ref, err := ParseImage(unreachable)
	if err != nil {
		t.Fatal(err)
	}
	id, err := c.sharedPull(context.Background(), ref, Request{Image: unreachable})
	if err != nil {
		t.Fatal(err)
	}
	// Here, between the pull and the lease, is where the collection lands.
	if removed, _ := c.Collect(context.Background()); len(removed) != 0 {
		t.Fatalf("a collection between the pull and its lease removed %v", removed)
	}
	lease := c.leased(id, unreachable)
	lease.Release()
	c.opt.Store.recs[id].LastUsed = time.Now().Add(-time.Second)
	if removed, _ := c.Collect(context.Background()); fmt.Sprint(removed) != "["+id+"]" {
		t.Fatalf("after the lease ended, removed %v, want %s", removed, id)
	}
}
