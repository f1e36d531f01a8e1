package transport

import (
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
)

// Keepalive settings shared by both sides: a dead link (a NAT that forgot
// the flow, a peer that vanished) is found within about a minute.
const (
	keepaliveTime    = 30 * time.Second
	keepaliveTimeout = 20 * time.Second
	// MaxMessageBytes bounds one gRPC message; status replies and file chunks
	// stay well under it.
	MaxMessageBytes = 16 << 20
)

// ServerOptions are the gRPC server options for serving with id, accepting
// only peers in trust.
func ServerOptions(id *Identity, trust *TrustList, log hclog.Logger) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.Creds(credentials.NewTLS(ServerTLSConfig(id, trust, log))),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: keepaliveTime, Timeout: keepaliveTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: keepaliveTime / 2, PermitWithoutStream: true}),
		grpc.MaxRecvMsgSize(MaxMessageBytes),
		grpc.MaxSendMsgSize(MaxMessageBytes),
	}
}

// Listen opens a TCP listener on addr (":10933").
func Listen(addr string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return l, nil
}

// Dial returns a gRPC client connection to addr that presents id and
// accepts the peer only if its certificate thumbprint is peerThumbprint.
// Like grpc.NewClient it connects lazily; the first RPC reports a refusal.
func Dial(addr string, id *Identity, peerThumbprint string) (*grpc.ClientConn, error) {
	trust, err := NewTrustList(peerThumbprint)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(credentials.NewTLS(ClientTLSConfig(id, trust))),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: keepaliveTime, Timeout: keepaliveTimeout, PermitWithoutStream: true}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageBytes), grpc.MaxCallSendMsgSize(MaxMessageBytes)),
	)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	return conn, nil
}
