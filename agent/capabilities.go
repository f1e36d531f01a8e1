package agent

import (
	"context"
	"os"
	"runtime"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"stevedore/internal/version"
	pb "stevedore/proto/stevedore/v1"
)

func nowUTC() time.Time { return time.Now().UTC() }

// GetCapabilities implements pb.AgentServer.
func (a *Agent) GetCapabilities(ctx context.Context, _ *pb.GetCapabilitiesRequest) (*pb.Capabilities, error) {
	host, _ := os.Hostname()
	m := a.cfg.Bundle.Manifest
	caps := &pb.Capabilities{
		AgentVersion: version.Version, ProtocolVersion: version.Protocol,
		Name: a.cfg.Name, Hostname: host, Os: runtime.GOOS, Arch: runtime.GOARCH,
		MaxConcurrentSteps: uint32(a.cfg.MaxSteps), RunningSteps: uint32(a.slots.running()),
		Pools: a.cfg.Pools, Labels: a.cfg.Labels, Thumbprint: a.cfg.Identity.Thumbprint,
		Bundle: &pb.Bundle{Name: m.Name, Version: m.Version, Entrypoint: m.Entrypoint, Requires: &pb.BundleRequirements{
			Libc: m.Requires.Libc, Interpreter: m.Requires.Interpreter, MinGlibc: m.Requires.MinGlibc, SharedLibraries: m.Requires.SharedLibraries,
		}},
		Docker: &pb.DockerEngine{},
	}
	if _, err := a.dockerExecutor(ctx); err != nil {
		caps.Docker.Error = err.Error()
	} else {
		a.dockerMu.Lock()
		caps.Docker.Available, caps.Docker.Version, caps.Docker.ApiVersion = true, a.dockerInfo.Version, a.dockerInfo.APIVersion
		a.dockerMu.Unlock()
	}
	return caps, nil
}

// PrePull implements pb.AgentServer. Pre-pulling comes with feeds and the
// image cache; until then a step pulls its own image when it starts.
func (a *Agent) PrePull(*pb.PrePullRequest, pb.Agent_PrePullServer) error {
	return status.Error(codes.Unimplemented, "PrePull is not available yet on this agent: steps pull their images when they start")
}
