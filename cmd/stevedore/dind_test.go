package main

import (
	"context"
	"io"
	"strings"
	"testing"
)

// --dind refuses, before it starts anything, what it cannot honour.
func TestServerDindRefusesItsMisuse(t *testing.T) {
	cases := []struct {
		name       string
		builtin    bool
		dockerHost string
		want       string
	}{
		{"without the built-in worker", false, "", "give --builtin-worker too"},
		{"with DOCKER_HOST", true, "tcp://10.0.0.1:2376", "DOCKER_HOST=tcp://10.0.0.1:2376 names an engine"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("DOCKER_HOST", c.dockerHost)
			o := serverOptions{dataDir: t.TempDir(), dind: true, builtinWorker: c.builtin, log: logOptions{level: "error", format: "text"}}
			err := runServerWithEngine(context.Background(), &o, io.Discard)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v; want %q", err, c.want)
			}
		})
	}
}
