package registry_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"github.com/hashicorp/go-hclog"

	"stevedore/internal/testenv"
	"stevedore/registry"
)

// pushUnique pushes a fresh image (testenv.PushRandomImage) and returns
// its reference and digest.
func pushUnique(t *testing.T, cli *client.Client, repo, tag string, size int) (string, string) {
	t.Helper()
	ref := testenv.PushRandomImage(t, cli, repo, tag, size)
	digest, err := registry.Access(context.Background(), ref, fixtureCreds)
	if err != nil {
		t.Fatal(err)
	}
	return ref, digest
}

func removeImage(cli *client.Client, ref string) { testenv.RemoveImage(cli, ref) }

func uniqueName(prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// registryRequests returns a function listing the requests ("GET
// /v2/…") the registry logged since registryRequests was called.
func registryRequests(t *testing.T) func() []string {
	t.Helper()
	const logFile = "/var/lib/stevedore-dev/log/registry.log"
	st, err := os.Stat(logFile)
	if err != nil {
		testenv.Unavailable(t, "registry log: %v", err)
	}
	from := st.Size()
	return func() []string {
		time.Sleep(200 * time.Millisecond) // let the registry write its last lines
		f, err := os.Open(logFile)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		f.Seek(from, io.SeekStart)
		var out []string
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			// The access log's lines: ... "GET /v2/test/x/manifests/1 HTTP/1.1" 200 ...
			line := sc.Text()
			if i := strings.Index(line, `] "`); i >= 0 {
				if j := strings.Index(line[i+3:], ` HTTP/`); j >= 0 {
					out = append(out, line[i+3:i+3+j])
				}
			}
		}
		return out
	}
}

func count(reqs []string, prefix string) int {
	n := 0
	for _, r := range reqs {
		if strings.HasPrefix(r, prefix) {
			n++
		}
	}
	return n
}

// countingEngine counts pulls at the engine boundary.
type countingEngine struct {
	*client.Client
	pulls atomic.Int32
}

func (e *countingEngine) ImagePull(ctx context.Context, ref string, opts image.PullOptions) (io.ReadCloser, error) {
	e.pulls.Add(1)
	return e.Client.ImagePull(ctx, ref, opts)
}

func TestTwentyStepsOnAnUncachedImagePullOnce(t *testing.T) {
	cli, _ := testenv.Docker(t)
	testenv.RequireRegistry(t)
	repo := uniqueName("shared")
	ref, _ := pushUnique(t, cli, repo, "1", 8<<20)
	t.Cleanup(func() { removeImage(cli, ref) })
	eng := &countingEngine{Client: cli}
	c := realCoordinator(t, func(o *registry.Options) { o.Engine = eng })
	reqs := registryRequests(t)

	const n = 20
	var wg sync.WaitGroup
	errs := make([]error, n)
	started := make(chan struct{})
	var once sync.Once
	for i := 1; i < n; i++ {
		wg.Go(func() {
			l, err := c.Ensure(context.Background(), registry.Request{Image: ref, Credentials: fixtureCreds,
				Progress: func(registry.Progress) { once.Do(func() { close(started) }) }})
			errs[i] = err
			l.Release()
		})
	}
	// One more step joins the running pull and gives up on its first
	// progress report; the pull goes on for the others.
	<-started
	quitter, quit := context.WithCancel(context.Background())
	_, errs[0] = c.Ensure(quitter, registry.Request{Image: ref, Credentials: fixtureCreds, Progress: func(registry.Progress) { quit() }})
	wg.Wait()
	if !errors.Is(errs[0], context.Canceled) {
		t.Logf("the quitter got %v (the pull may have finished first)", errs[0])
	}
	for i, err := range errs[1:] {
		if err != nil {
			t.Errorf("waiter %d: %v", i+1, err)
		}
	}
	if got := eng.pulls.Load(); got != 1 {
		t.Errorf("%d pulls at the engine for %d steps, want 1", got, n)
	}
	if got := count(reqs(), "GET /v2/test/"+repo+"/manifests/"); got != 1 {
		t.Errorf("the registry served %d manifest GETs, want 1", got)
	}
}

func TestStalledRegistryIsDetected(t *testing.T) {
	cli, _ := testenv.Docker(t)
	testenv.RequireRegistry(t)
	repo := uniqueName("stall")
	pushUnique(t, cli, repo, "1", 32<<20)
	proxy := testenv.NewProxy(t, testenv.Registry)
	ref := proxy.Addr() + "/test/" + repo + ":1"
	t.Cleanup(func() { removeImage(cli, ref) })
	c := realCoordinator(t, func(o *registry.Options) { o.StallTimeout = 2 * time.Second; o.Retries = -1 })
	proxy.StallAt.Store(256 << 10) // manifest and config pass; the layer stops early
	start := time.Now()
	_, err := c.Ensure(context.Background(), registry.Request{Image: ref, Credentials: fixtureCreds})
	if !errors.Is(err, registry.ErrStalled) {
		t.Fatalf("err %v, want ErrStalled", err)
	}
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("the stall took %s to notice with a 2s stall timeout", took)
	}
}

func TestRegistryBackWithinRetries(t *testing.T) {
	cli, _ := testenv.Docker(t)
	testenv.RequireRegistry(t)
	repo := uniqueName("flaky")
	pushUnique(t, cli, repo, "1", 1<<20)
	proxy := testenv.NewProxy(t, testenv.Registry)
	ref := proxy.Addr() + "/test/" + repo + ":1"
	t.Cleanup(func() { removeImage(cli, ref) })
	eng := &countingEngine{Client: cli}
	c := realCoordinator(t, func(o *registry.Options) { o.Engine = eng; o.Retries = 6; o.Backoff = 300 * time.Millisecond })
	proxy.Refuse.Store(true)
	time.AfterFunc(1500*time.Millisecond, func() { proxy.Refuse.Store(false) })
	var messages []string
	var mu sync.Mutex
	l, err := c.Ensure(context.Background(), registry.Request{Image: ref, Credentials: fixtureCreds, Progress: func(p registry.Progress) {
		mu.Lock()
		defer mu.Unlock()
		if p.Message != "" {
			messages = append(messages, p.Message)
		}
	}})
	if err != nil {
		t.Fatalf("err %v after %d attempts", err, eng.pulls.Load())
	}
	l.Release()
	if eng.pulls.Load() < 2 || len(messages) == 0 {
		t.Errorf("%d pulls, retry messages %q: want a retry that the step's log hears of", eng.pulls.Load(), messages)
	}
}

func TestRefreshPicksUpAMovedTag(t *testing.T) {
	cli, _ := testenv.Docker(t)
	testenv.RequireRegistry(t)
	repo := uniqueName("moving")
	ref, first := pushUnique(t, cli, repo, "latest", 1<<10)
	t.Cleanup(func() { removeImage(cli, ref) })
	c := realCoordinator(t, nil)
	img := []registry.PrepullImage{{Image: ref, Credentials: fixtureCreds}}
	log := testLogger(t)
	c.Refresh(context.Background(), img, log)
	if d := digestOf(t, cli, ref); d != first {
		t.Fatalf("after the first refresh the engine has %s, want %s", d, first)
	}
	_, second := pushUnique(t, cli, repo, "latest", 1<<10) // the tag moves
	if second == first {
		t.Fatal("the push did not move the tag")
	}
	c.Refresh(context.Background(), img, log)
	if d := digestOf(t, cli, ref); d != second {
		t.Errorf("after the tag moved, refresh left %s, want %s", d, second)
	}
}

func digestOf(t *testing.T, cli *client.Client, ref string) string {
	t.Helper()
	inspect, err := cli.ImageInspect(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	name := ref[:strings.LastIndex(ref, ":")]
	for _, d := range inspect.RepoDigests {
		if strings.HasPrefix(d, name+"@") {
			return strings.TrimPrefix(d, name+"@")
		}
	}
	return ""
}

func TestCollectOnTheRealEngine(t *testing.T) {
	cli, _ := testenv.Docker(t)
	testenv.RequireRegistry(t)
	c := realCoordinator(t, func(o *registry.Options) { o.GC = registry.GCOptions{MinAge: time.Nanosecond, Keep: 2} })
	ctx := context.Background()
	var refs []string
	var leases []*registry.Lease
	for i := range 3 {
		ref, _ := pushUnique(t, cli, uniqueName(fmt.Sprintf("gc%d", i)), "1", 1<<10)
		t.Cleanup(func() { removeImage(cli, ref) })
		l, err := c.Ensure(ctx, registry.Request{Image: ref, Credentials: fixtureCreds})
		if err != nil {
			t.Fatal(err)
		}
		refs = append(refs, ref)
		leases = append(leases, l)
		time.Sleep(10 * time.Millisecond) // distinct last-use times
	}
	// Three images, keep two: the oldest goes. Had it been in use, none would.
	leases[0].Release()
	leases[2].Release()
	testenv.Image(t, cli, testenv.Static) // an image the coordinator did not pull
	removed, err := c.Collect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	present := func(ref string) bool { _, err := cli.ImageInspect(ctx, ref); return err == nil }
	if len(removed) != 1 || present(refs[0]) || !present(refs[1]) || !present(refs[2]) || !present(testenv.Static) {
		t.Errorf("removed %v; present: %v %v %v, foreign %v", removed, present(refs[0]), present(refs[1]), present(refs[2]), present(testenv.Static))
	}
	leases[1].Release()
}

func testLogger(t *testing.T) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Debug, Output: io.Discard})
}
