package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
)

// Polling mode: the agent dials the server (TLS client, the server's
// thumbprint pinned) and then serves the Agent gRPC service over the
// connection it dialed; the server, which pinned the agent's thumbprint at
// the handshake, runs a gRPC client over the connection it accepted. HTTP/2
// multiplexes any number of calls over it. TLS is done by the TCP roles
// here, so the gRPC layers on top use no transport credentials of their own.

// Redial backoff bounds of a polling agent.
const (
	DefaultMinBackoff = time.Second
	DefaultMaxBackoff = 60 * time.Second
	// healthyFor: a connection that lived this long resets the backoff.
	healthyFor  = time.Minute
	dialTimeout = 20 * time.Second
)

// Poller keeps a polling agent connected to one of its servers.
type Poller struct {
	// Addr is a server's polling address, e.g. "server.example:10943": the
	// whole list of a poller with one server.
	Addr string
	// Addrs are the polling addresses of the server's nodes, dialed after
	// Addr when both are set. Any of them serves the agent, so the poller
	// keeps to the one that last answered and moves on when it does not.
	Addrs    []string
	Identity *Identity
	// Server pins the server's thumbprint(s), of every node.
	Server *TrustList
	Log    hclog.Logger
	// Backoff bounds between attempts; zero: DefaultMinBackoff/DefaultMaxBackoff.
	MinBackoff, MaxBackoff time.Duration
}

// PollingServerOptions are the gRPC server options of a polling agent:
// keepalives, no transport credentials (the dialed connection is TLS already).
func PollingServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.Creds(insecure.NewCredentials()),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: keepaliveTime, Timeout: keepaliveTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: keepaliveTime / 2, PermitWithoutStream: true}),
		grpc.MaxRecvMsgSize(MaxMessageBytes),
		grpc.MaxSendMsgSize(MaxMessageBytes),
	}
}

// Run dials the server and serves srv over every connection it dials, one
// at a time, redialing with jittered exponential backoff when a connection
// fails or ends, until ctx ends. Each round of dials starts with the
// address that last connected (a node restarting is the common case) and
// moves on to the next at once when one fails; the backoff is waited only
// when a whole round failed, or after a connection ended. srv must have
// been made with PollingServerOptions.
func (p *Poller) Run(ctx context.Context, srv *grpc.Server) error {
	addrs := p.addrs()
	if len(addrs) == 0 {
		return errors.New("polling: no server address")
	}
	log := p.Log
	if log == nil {
		log = hclog.NewNullLogger()
	}
	minB, maxB := p.MinBackoff, p.MaxBackoff
	if minB <= 0 {
		minB = DefaultMinBackoff
	}
	if maxB <= 0 {
		maxB = DefaultMaxBackoff
	}
	lis := newConnListener()
	go srv.Serve(lis)
	defer lis.Close()
	backoff := minB
	last := 0 // index in addrs of the address that last connected
	for {
		conn, i, err := p.dialRound(ctx, addrs, last, log)
		if err == nil {
			last = i
			started := time.Now()
			log.Info("connected to the server", "server", addrs[i])
			done := lis.push(conn)
			select {
			case <-done:
				log.Warn("connection to the server ended; redialing", "server", addrs[i], "lived", time.Since(started).Round(time.Second))
			case <-ctx.Done():
				conn.Close()
				return ctx.Err()
			}
			if time.Since(started) >= healthyFor {
				backoff = minB
			}
		} else {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			log.Warn("cannot reach the server", "servers", len(addrs), "error", err, "retry_in_at_most", backoff)
		}
		// Full jitter: agents dropped together (a server restart) come
		// back spread over the whole window, not as one wave.
		wait := time.Duration(rand.Int64N(int64(backoff)) + 1)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
		backoff = min(backoff*2, maxB)
	}
}

// addrs is Addr, if set, then Addrs.
func (p *Poller) addrs() []string {
	if p.Addr == "" {
		return p.Addrs
	}
	return append([]string{p.Addr}, p.Addrs...)
}

// dialRound dials addrs in turn from first, wrapping around, and returns
// the first connection made and its address's index; when every address
// failed, the error joins every dial's.
func (p *Poller) dialRound(ctx context.Context, addrs []string, first int, log hclog.Logger) (net.Conn, int, error) {
	var errs []error
	for n := range addrs {
		i := (first + n) % len(addrs)
		conn, err := p.dial(ctx, addrs[i])
		if err == nil {
			return conn, i, nil
		}
		if ctx.Err() != nil {
			return nil, 0, err
		}
		if n < len(addrs)-1 {
			log.Warn("cannot reach this server node; trying the next", "server", addrs[i], "error", err)
		}
		errs = append(errs, err)
	}
	return nil, 0, errors.Join(errs...)
}

// dial opens a TLS connection to the server at addr, pinning its thumbprint.
func (p *Poller) dial(ctx context.Context, addr string) (net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	d := tls.Dialer{NetDialer: &net.Dialer{KeepAlive: keepaliveTime}, Config: ClientTLSConfig(p.Identity, p.Server)}
	conn, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	return conn, nil
}

// connListener hands connections the poller dialed to a gRPC server as if
// it had accepted them.
type connListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newConnListener() *connListener {
	return &connListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

// push gives conn to the gRPC server and returns a channel closed when the
// server has closed it (the link died or ended).
func (l *connListener) push(conn net.Conn) <-chan struct{} {
	w := &watchedConn{Conn: conn, done: make(chan struct{})}
	select {
	case l.conns <- w:
	case <-l.closed:
		conn.Close()
		close(w.done)
	}
	return w.done
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *connListener) Addr() net.Addr { return pollingAddr{} }

type pollingAddr struct{}

func (pollingAddr) Network() string { return "polling" }
func (pollingAddr) String() string  { return "polling" }

// watchedConn closes done once when closed.
type watchedConn struct {
	net.Conn
	done chan struct{}
	once sync.Once
}

func (c *watchedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { close(c.done) })
	return err
}

// ---- the server's side ----------------------------------------------------

// PollingConn is a polling agent's accepted, authenticated connection.
type PollingConn struct {
	// Thumbprint is the agent's, as pinned at the handshake.
	Thumbprint string
	// Remote is the agent's address as the server sees it.
	Remote string
	// Client calls the agent's service over the connection.
	Client *grpc.ClientConn
	// Done is closed when the connection has ended.
	Done <-chan struct{}
}

// AcceptPolling completes the TLS handshake of a connection accepted on the
// polling port (refusing, and logging, agents not in trust) and returns a
// gRPC client over it. The client never redials: when the link ends, Done
// closes and the agent's next connection brings a new PollingConn.
func AcceptPolling(ctx context.Context, raw net.Conn, id *Identity, trust *TrustList, log hclog.Logger) (*PollingConn, error) {
	tlsConn := tls.Server(raw, ServerTLSConfig(id, trust, log))
	hctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	if err := tlsConn.HandshakeContext(hctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("polling handshake with %s: %w", raw.RemoteAddr(), err)
	}
	certs := tlsConn.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		tlsConn.Close()
		return nil, fmt.Errorf("polling handshake with %s: %w: no certificate", raw.RemoteAddr(), ErrUntrusted)
	}
	w := &watchedConn{Conn: tlsConn, done: make(chan struct{})}
	var used sync.Once
	dialer := func(context.Context, string) (net.Conn, error) {
		var c net.Conn
		used.Do(func() { c = w })
		if c == nil {
			return nil, errors.New("the polling agent's connection has ended; it will dial again")
		}
		return c, nil
	}
	cc, err := grpc.NewClient("passthrough:///polling-agent",
		grpc.WithContextDialer(dialer),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: keepaliveTime, Timeout: keepaliveTimeout, PermitWithoutStream: true}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageBytes), grpc.MaxCallSendMsgSize(MaxMessageBytes)),
	)
	if err != nil {
		tlsConn.Close()
		return nil, fmt.Errorf("polling client for %s: %w", raw.RemoteAddr(), err)
	}
	cc.Connect()
	go func() { <-w.done; cc.Close() }()
	return &PollingConn{Thumbprint: Thumbprint(certs[0].Raw), Remote: raw.RemoteAddr().String(), Client: cc, Done: w.done}, nil
}
