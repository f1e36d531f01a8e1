package main

import (
	"errors"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"stevedore/internal/testenv"
)

// Thumbprints of two server nodes, as an operator might paste them.
var (
	nodeTP1 = strings.Repeat("ab", 32)
	nodeTP2 = strings.Repeat("cd", 32)
)

// readPolling parses args and env as `stevedore agent` does and returns
// its polling settings.
func readPolling(t *testing.T, args []string, env map[string]string) (polling, error) {
	t.Helper()
	cmd := newAgentCommand()
	if err := cmd.ParseFlags(args); err != nil {
		return polling{}, err
	}
	if err := flagsFromEnv(cmd.Flags(), func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		return polling{}, err
	}
	return pollingFlags(cmd.Flags())
}

func TestPollingFlags(t *testing.T) {
	// As openssl prints them: upper case, bytes between colons.
	upper := strings.ToUpper(nodeTP1)
	colons := strings.TrimSuffix(strings.Repeat("CD:", 32), ":")
	tests := []struct {
		name          string
		args          []string
		env           map[string]string
		addrs, prints []string
		wantErr       bool
		addrErr       bool // the error is about an address (a *net.AddrError)
	}{
		{name: "listening mode: none", args: nil},
		{name: "one server", args: []string{"--server", "a:10943", "--server-thumbprint", nodeTP1},
			addrs: []string{"a:10943"}, prints: []string{nodeTP1}},
		{name: "comma-separated", args: []string{"--server", "a:10943,b:10943", "--server-thumbprint", nodeTP1 + "," + nodeTP2},
			addrs: []string{"a:10943", "b:10943"}, prints: []string{nodeTP1, nodeTP2}},
		{name: "repeated", args: []string{"--server", "a:10943", "--server", "[::1]:10943", "--server-thumbprint", nodeTP1, "--server-thumbprint", nodeTP2},
			addrs: []string{"a:10943", "[::1]:10943"}, prints: []string{nodeTP1, nodeTP2}},
		{name: "both, with spaces, repeats dropped, thumbprints normalised",
			args:  []string{"--server", "a:10943, b:10943", "--server", "b:10943", "--server-thumbprint", upper + "," + colons, "--server-thumbprint", nodeTP1},
			addrs: []string{"a:10943", "b:10943"}, prints: []string{nodeTP1, nodeTP2}},
		{name: "nodes sharing one certificate", args: []string{"--server", "a:10943,b:10943", "--server-thumbprint", nodeTP1},
			addrs: []string{"a:10943", "b:10943"}, prints: []string{nodeTP1}},
		{name: "from the environment, as install writes it",
			env:   map[string]string{"STEVEDORE_SERVER": "a:10943,b:10943", "STEVEDORE_SERVER_THUMBPRINT": nodeTP1 + "," + nodeTP2},
			addrs: []string{"a:10943", "b:10943"}, prints: []string{nodeTP1, nodeTP2}},
		{name: "the command line wins over the environment", args: []string{"--server", "c:10943"},
			env:   map[string]string{"STEVEDORE_SERVER": "a:10943,b:10943", "STEVEDORE_SERVER_THUMBPRINT": nodeTP1},
			addrs: []string{"c:10943"}, prints: []string{nodeTP1}},
		{name: "an address without a port", args: []string{"--server", "a:10943,b", "--server-thumbprint", nodeTP1}, wantErr: true, addrErr: true},
		{name: "an empty address", args: []string{"--server", "a:10943,", "--server-thumbprint", nodeTP1}, wantErr: true, addrErr: true},
		{name: "a bad thumbprint among good ones", args: []string{"--server", "a:10943", "--server-thumbprint", nodeTP1 + ",nope"}, wantErr: true},
		{name: "a bad address in the environment", env: map[string]string{"STEVEDORE_SERVER": "a:10943,b"}, wantErr: true, addrErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := readPolling(t, tt.args, tt.env)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err %v, want an error: %v", err, tt.wantErr)
			}
			var ae *net.AddrError
			if tt.addrErr && !errors.As(err, &ae) {
				t.Errorf("err %v: want a *net.AddrError wrapped", err)
			}
			if err != nil {
				return
			}
			if !slices.Equal(p.addrs, tt.addrs) || !slices.Equal(p.thumbprints, tt.prints) {
				t.Errorf("addrs %q thumbprints %q, want %q %q", p.addrs, p.thumbprints, tt.addrs, tt.prints)
			}
		})
	}
}

// An agent given a dead node first and the live server second polls the
// live one and runs steps; the dead node's thumbprint, pinned too, does not
// get in the way.
func TestAgentPollsTheNextServerNode(t *testing.T) {
	s := newServerSetup(t) // no --trust: the agent registers
	s.start(t, "STEVEDORE_REGISTRATION_TOKEN=join-token")
	startEnv(t, "agent.log", []string{"STEVEDORE_REGISTRATION_TOKEN=join-token"}, "agent", "--state-dir", filepath.Join(t.TempDir(), "agent"),
		"--server", testenv.FreeAddr(t)+","+s.polling, "--server-thumbprint", nodeTP1, "--server-thumbprint", s.thumbprint,
		"--register", s.url(), "--name", "multi-1", "--pool", "multi")
	runCases(t, s, nil, []runCase{
		{"a step on the agent of two server addresses", []string{"--pool", "multi", "--queue-timeout", "30s", "--script", "echo second node"}, testPassword, 0, "second node"},
	})
}
