package agent

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"stevedore/internal/version"
	pb "stevedore/proto/stevedore/v1"
	"stevedore/registry"
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
		HostProcessTracking: a.host.Tracking(),
		NotAccepting:        a.notAccepting(),
		Bundle: &pb.Bundle{Name: m.Name, Version: m.Version, Entrypoint: m.Entrypoint, Requires: &pb.BundleRequirements{
			Libc: m.Requires.Libc, Interpreter: m.Requires.Interpreter, MinGlibc: m.Requires.MinGlibc, SharedLibraries: m.Requires.SharedLibraries,
		}},
		Docker:       &pb.DockerEngine{},
		CachedImages: a.cachedImages(),
	}
	if err := a.dockerAvailable(ctx); err != nil {
		caps.Docker.Error = err.Error()
	} else {
		a.dockerMu.Lock()
		caps.Docker.Available, caps.Docker.Version, caps.Docker.ApiVersion = true, a.dockerInfo.Version, a.dockerInfo.APIVersion
		a.dockerMu.Unlock()
	}
	return caps, nil
}

// PrePull implements pb.AgentServer: each image is made available now
// (policy always unless the request says otherwise), with throttled
// progress, and a last message per image says how it went.
func (a *Agent) PrePull(req *pb.PrePullRequest, stream pb.Agent_PrePullServer) error {
	d, err := a.dockerExecutor(stream.Context())
	if err != nil {
		return status.Errorf(codes.FailedPrecondition, "cannot pre-pull: %v", err)
	}
	_ = d
	for i, img := range req.GetImages() {
		if err := validateContainer(fmt.Sprintf("images[%d]", i), img); err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
		if err := registry.CheckAllowed(a.cfg.Images.AllowedImages, img.GetImage()); err != nil {
			return status.Error(codes.PermissionDenied, err.Error())
		}
	}
	for _, img := range req.GetImages() {
		policy, err := pullPolicy(img.GetPullPolicy())
		if err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
		if policy == registry.PullDefault {
			policy = registry.PullAlways
		}
		creds, source, err := a.credentials(stream.Context(), img)
		if err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
		var mu sync.Mutex
		var last time.Time
		var sendErr error
		progress := func(p registry.Progress) {
			mu.Lock()
			defer mu.Unlock()
			if sendErr != nil || (p.Message == "" && time.Since(last) < time.Second) {
				return
			}
			last = time.Now()
			sendErr = stream.Send(&pb.PrePullProgress{Image: img.GetImage(), Status: p.String(),
				LayersDone: uint32(p.LayersDone), LayersTotal: uint32(p.LayersTotal), BytesDone: p.BytesDone, BytesTotal: p.BytesTotal})
		}
		lease, err := a.coord.Ensure(stream.Context(), registry.Request{Image: img.GetImage(), Credentials: creds, Source: source,
			Policy: policy, Platform: img.GetPlatform(), Progress: progress})
		mu.Lock()
		final := &pb.PrePullProgress{Image: img.GetImage(), Done: true}
		mu.Unlock()
		if err != nil {
			final.Error, final.Status = err.Error(), "failed"
		} else {
			final.ImageId, final.Status = lease.ImageID, "ready"
			if rec, ok := a.images.Get(lease.ImageID); ok {
				final.Digest = rec.Digest
			}
			lease.Release()
		}
		if err := stream.Send(final); err != nil {
			return err
		}
	}
	return nil
}

// cachedImages lists the images the agent pulled, for capabilities.
func (a *Agent) cachedImages() []*pb.CachedImage {
	a.dockerMu.Lock()
	coord := a.coord
	a.dockerMu.Unlock()
	var out []*pb.CachedImage
	for _, r := range a.images.All() {
		ref := ""
		if len(r.Refs) > 0 {
			ref = r.Refs[len(r.Refs)-1]
		}
		out = append(out, &pb.CachedImage{Reference: ref, ImageId: r.ImageID, Digest: r.Digest, SizeBytes: r.Size,
			LastUsed: timestamppb.New(r.LastUsed), Pinned: coord != nil && coord.IsPinned(ref)})
	}
	return out
}
