package transport

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// handshake runs a TLS handshake between a server trusting serverTrusts and
// a client pinning clientPins, returning each side's error.
func handshake(t *testing.T, server, client *Identity, serverTrusts, clientPins string, log hclog.Logger) (serverErr, clientErr error) {
	t.Helper()
	st, err := NewTrustList(serverTrusts)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := NewTrustList(clientPins)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	done := make(chan error, 1)
	go func() {
		conn, err := lis.Accept()
		if err != nil {
			done <- err
			return
		}
		c := tls.Server(conn, ServerTLSConfig(server, st, log))
		done <- c.Handshake()
		c.Close()
	}()
	conn, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(conn, ClientTLSConfig(client, ct))
	c.SetDeadline(time.Now().Add(10 * time.Second))
	clientErr = c.Handshake()
	if clientErr == nil {
		// TLS 1.3 verifies the client after the client's Finished: a read
		// shows the server's verdict (a clean close is acceptance).
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			clientErr = err
		}
	}
	c.Close()
	return <-done, clientErr
}

func TestPinnedHandshake(t *testing.T) {
	server, _, err := LoadOrCreateIdentity(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	client, _, _ := LoadOrCreateIdentity(t.TempDir())
	stranger, _, _ := LoadOrCreateIdentity(t.TempDir())
	tests := []struct {
		name                      string
		clientID                  *Identity
		serverTrusts, clientPins  string
		wantServerErr, wantLogged bool
		wantClientErr             bool
	}{
		{"both pinned", client, client.Thumbprint, server.Thumbprint, false, false, false},
		{"client not trusted", stranger, client.Thumbprint, server.Thumbprint, true, true, true},
		{"server not the pinned one", client, client.Thumbprint, stranger.Thumbprint, true, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			log := hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Info})
			serr, cerr := handshake(t, server, tt.clientID, tt.serverTrusts, tt.clientPins, log)
			if (serr != nil) != tt.wantServerErr || (cerr != nil) != tt.wantClientErr {
				t.Fatalf("server err %v, client err %v", serr, cerr)
			}
			if tt.wantServerErr && tt.wantLogged && !errors.Is(serr, ErrUntrusted) {
				t.Errorf("server err %v, want ErrUntrusted", serr)
			}
			logged := strings.Contains(buf.String(), "refused an untrusted client") && strings.Contains(buf.String(), tt.clientID.Thumbprint)
			if logged != tt.wantLogged {
				t.Errorf("logged = %v, want %v: %q", logged, tt.wantLogged, buf.String())
			}
		})
	}
}

func TestParseThumbprint(t *testing.T) {
	const tp = "ab01ab01ab01ab01ab01ab01ab01ab01ab01ab01ab01ab01ab01ab01ab01ab01"
	tests := []struct {
		in, want string
		ok       bool
	}{
		{tp, tp, true},
		{strings.ToUpper(tp), tp, true},
		{"AB:01:AB:01:AB:01:AB:01:AB:01:AB:01:AB:01:AB:01:AB:01:AB:01:AB:01:AB:01:AB:01:AB:01:AB:01:AB:01", tp, true},
		{tp[:63], "", false},
		{"zz" + tp[2:], "", false},
		{"", "", false},
	}
	for _, tt := range tests {
		got, err := ParseThumbprint(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseThumbprint(%q) = %q, %v", tt.in, got, err)
		}
	}
}
