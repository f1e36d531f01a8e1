package registry

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"
)

// TestMetricsOnPullHook: the OnPull hook hears once per pull, with how it ended.
func TestMetricsOnPullHook(t *testing.T) {
	tests := []struct {
		name string
		pull func(ctx context.Context, _ string) (io.ReadCloser, error)
		// leave: the only waiter gives up, which stops the pull.
		leave bool
		want  string
	}{
		{name: "success", pull: func(ctx context.Context, _ string) (io.ReadCloser, error) {
			release := make(chan struct{})
			close(release)
			return stream(ctx, release), nil
		}, want: "success"},
		{name: "failed", pull: func(context.Context, string) (io.ReadCloser, error) {
			return nil, errors.New("connection reset")
		}, want: "failed"},
		{name: "cancelled", pull: func(ctx context.Context, _ string) (io.ReadCloser, error) {
			return stream(ctx, nil), nil
		}, leave: true, want: "cancelled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			eng := newFakeEngine()
			eng.pull = tt.pull
			var mu sync.Mutex
			var results []string
			heard := make(chan struct{}, 1)
			c := newTestCoordinator(t, eng, func(o *Options) {
				o.Retries = -1
				o.OnPull = func(result string, _ time.Duration) {
					mu.Lock()
					results = append(results, result)
					mu.Unlock()
					heard <- struct{}{}
				}
			})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tt.leave {
				go func() {
					for eng.pulls.Load() == 0 {
						time.Sleep(5 * time.Millisecond)
					}
					cancel()
				}()
			}
			if l, err := c.Ensure(ctx, Request{Image: unreachable}); err == nil {
				l.Release()
			}
			select {
			case <-heard:
			case <-time.After(10 * time.Second):
				t.Fatal("OnPull was not called")
			}
			mu.Lock()
			defer mu.Unlock()
			if len(results) != 1 || results[0] != tt.want {
				t.Errorf("OnPull heard %v, want [%s]", results, tt.want)
			}
		})
	}
}
