package registry_test

import (
	"context"
	"sort"
	"testing"
	"time"

	"stevedore/internal/testenv"
	"stevedore/registry"
)

// BenchmarkEnsureCached measures Ensure for an image already on the worker
// (policy if-not-present, credentials already authorized), against the bare
// engine round trip it contains (ImageInspect), measured in the same run.
//
//	go test -run '^$' -bench EnsureCached ./registry/
func BenchmarkEnsureCached(b *testing.B) {
	cli, _ := testenv.Docker(b)
	store, err := registry.OpenStore(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	c := registry.NewCoordinator(registry.Options{Engine: cli, Store: store})
	req := registry.Request{Image: testenv.Static, Credentials: fixtureCreds, Policy: registry.PullAlways}
	ctx := context.Background()
	l, err := c.Ensure(ctx, req) // pulled once: now cached and authorized
	if err != nil {
		b.Fatal(err)
	}
	l.Release()
	req.Policy = registry.PullIfNotPresent

	median := func(d []time.Duration) time.Duration {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return d[len(d)/2]
	}
	ensure := make([]time.Duration, 0, b.N)
	inspect := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		l, err := c.Ensure(ctx, req)
		if err != nil {
			b.Fatal(err)
		}
		ensure = append(ensure, time.Since(t0))
		l.Release()
		t0 = time.Now()
		if _, err := cli.ImageInspect(ctx, testenv.Static); err != nil {
			b.Fatal(err)
		}
		inspect = append(inspect, time.Since(t0))
	}
	b.StopTimer()
	me, mi := median(ensure), median(inspect)
	b.ReportMetric(float64(me.Microseconds())/1000, "ms-median-ensure")
	b.ReportMetric(float64(mi.Microseconds())/1000, "ms-median-inspect")
	b.ReportMetric(float64(me)/float64(mi), "ensure/inspect")
}
