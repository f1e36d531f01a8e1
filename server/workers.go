package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"stevedore/internal/version"
	pb "stevedore/proto/stevedore/v1"
	"stevedore/registry"
	"stevedore/transport"
)

// capsRefresh is how often a connected worker's capabilities are asked again.
const capsRefresh = 30 * time.Second

// worker is the server's handle for a worker: its current connection, if
// any, and the steps the server has given it.
type worker struct {
	rec WorkerRecord

	mu        sync.Mutex
	client    pb.AgentClient
	connected chan struct{} // closed when a connection arrives; replaced when it ends
	done      <-chan struct{}
	slots     int
	inflight  int
	// caps are the capabilities the worker last reported.
	caps *pb.Capabilities
	// images are the normalised references of the images its agent has
	// cached, from caps: dispatch prefers a worker that need not pull.
	images map[string]bool
	// downSince is when the worker was last seen going (or the server
	// started without it); its steps are lost past Config.WorkerLostAfter.
	downSince time.Time
	// forgotten: removed through the API; its steps end at once.
	forgotten bool
	// gone is closed when the worker is forgotten.
	gone chan struct{}
}

// WorkerStatus is a worker as the API shows it.
type WorkerStatus struct {
	WorkerRecord
	Connected bool `json:"connected"`
	Slots     int  `json:"slots"`
	// Running is the steps this server has given the worker; FreeSlots
	// what it can take now.
	Running   int `json:"running"`
	FreeSlots int `json:"free_slots"`
	// Docker says whether the worker's engine answers (container steps need it).
	Docker       bool   `json:"docker"`
	DockerError  string `json:"docker_error,omitempty"`
	AgentVersion string `json:"agent_version,omitempty"`
	// ProtocolVersion is the wire contract the worker speaks; steps go only
	// to workers that speak this server's (Incompatible says why not).
	ProtocolVersion uint32 `json:"protocol_version,omitempty"`
	Incompatible    string `json:"incompatible,omitempty"`
	Hostname        string `json:"hostname,omitempty"`
	CachedImages    int    `json:"cached_images"`
	// NotAccepting says why the worker takes no new steps now (draining,
	// low on disk), as it last reported.
	NotAccepting string `json:"not_accepting,omitempty"`
	// DisconnectedSince is when a worker that is not connected went away.
	DisconnectedSince time.Time `json:"disconnected_since,omitzero"`
}

func newWorker(rec WorkerRecord) *worker {
	return &worker{rec: rec, connected: make(chan struct{}), downSince: time.Now().UTC(), gone: make(chan struct{})}
}

func (w *worker) status() WorkerStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := WorkerStatus{WorkerRecord: w.rec, Connected: w.client != nil, Slots: w.slots, Running: w.inflight,
		Docker: w.caps.GetDocker().GetAvailable(), DockerError: w.caps.GetDocker().GetError(),
		AgentVersion: w.caps.GetAgentVersion(), Hostname: w.caps.GetHostname(), CachedImages: len(w.caps.GetCachedImages()),
		ProtocolVersion: w.caps.GetProtocolVersion(), Incompatible: incompatible(w.caps), NotAccepting: w.caps.GetNotAccepting()}
	if st.Connected {
		st.FreeSlots = max(0, w.slots-w.inflight)
	} else {
		st.DisconnectedSince = w.downSince
	}
	return st
}

// incompatible says why a worker with caps cannot be given steps: it
// speaks another version of the wire contract (an agent of another
// release, during a rolling upgrade), which this server may misread.
func incompatible(caps *pb.Capabilities) string {
	if caps == nil || caps.GetProtocolVersion() == version.Protocol {
		return ""
	}
	return fmt.Sprintf("the worker's agent %s speaks wire protocol %d, this server %d: upgrade the one that is behind",
		cmp.Or(caps.GetAgentVersion(), "(version unknown)"), caps.GetProtocolVersion(), version.Protocol)
}

// refuses notes, until its next capabilities, that the worker takes no
// new steps (it refused one saying why), so dispatch looks elsewhere.
func (w *worker) refuses(why string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	caps := proto.Clone(w.caps).(*pb.Capabilities)
	caps.NotAccepting = why
	w.setCapsLocked(caps)
}

func (w *worker) hasDocker() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.caps.GetDocker().GetAvailable()
}

// setCaps records a worker's capabilities.
func (w *worker) setCaps(caps *pb.Capabilities) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.setCapsLocked(caps)
}

func (w *worker) setCapsLocked(caps *pb.Capabilities) {
	w.caps = caps
	w.slots = int(caps.GetMaxConcurrentSteps())
	w.rec.Pools, w.rec.Labels = caps.GetPools(), caps.GetLabels()
	w.images = make(map[string]bool, len(caps.GetCachedImages()))
	for _, img := range caps.GetCachedImages() {
		w.images[normalImage(img.GetReference())] = true
	}
}

// normalImage is ref as `docker pull` reads it, so that "debian:12" and
// "docker.io/library/debian:12" are one image; ref itself if it does not parse.
func normalImage(ref string) string {
	if n, err := registry.ParseImage(ref); err == nil {
		return n.String()
	}
	return ref
}

// connect makes client the worker's connection until done closes, with
// caps as what it can do; drivers waiting for it and dispatch go on.
func (s *Server) connect(w *worker, client pb.AgentClient, done <-chan struct{}, caps *pb.Capabilities) {
	w.mu.Lock()
	w.client, w.done = client, done
	w.setCapsLocked(caps)
	close(w.connected)
	w.mu.Unlock()
	s.setLeft(w.rec.Name, time.Time{})
	if why := incompatible(caps); why != "" {
		s.log.Warn("worker connected, but it is given no steps", "worker", w.rec.Name, "why", why)
	}
	go s.refreshCaps(w, capsRefresh)
	go s.collectAbandoned(w, client)
	s.kick()
	if s.shared {
		s.kickLeases() // its steps another node drove may be this one's now
	}
}

// disconnect ends the connection done belongs to, if it is still the
// worker's, and records when it went; its steps wait for the next one.
func (s *Server) disconnect(w *worker, done <-chan struct{}) {
	w.mu.Lock()
	gone := w.done == done
	if gone {
		w.client, w.done = nil, nil
		w.connected = make(chan struct{})
		// To the microsecond, the stores' resolution, so that it reads the
		// same after a restart.
		w.downSince = time.Now().UTC().Truncate(time.Microsecond)
	}
	since := w.downSince
	w.mu.Unlock()
	if gone {
		s.setLeft(w.rec.Name, since)
	}
}

// setLeft records when a worker went away (zero: it is back).
func (s *Server) setLeft(name string, at time.Time) {
	if s.ctx.Err() != nil {
		return // the server is closing its connections: the workers did not leave
	}
	if _, away := s.leftAt(name); at.IsZero() && !away {
		return // the common connect: a read, not a write (and its fsync)
	}
	if err := s.db.SetWorkerLeft(name, at); err != nil {
		s.log.Warn("cannot record when a worker went away", "worker", name, "error", err)
	}
}

// leftAt is when a worker went away, if it was away when last recorded.
func (s *Server) leftAt(name string) (time.Time, bool) {
	at, err := s.db.WorkerLeft(name)
	if err != nil {
		s.log.Warn("cannot read when a worker went away", "worker", name, "error", err)
	}
	return at, !at.IsZero()
}

// refreshCaps asks the worker for its capabilities again (its engine may
// have come or gone, images been cached) while it is connected.
func (s *Server) refreshCaps(w *worker, every time.Duration) {
	for {
		w.mu.Lock()
		c, done := w.client, w.done
		w.mu.Unlock()
		if c == nil {
			return
		}
		select {
		case <-s.ctx.Done():
			return
		case <-done:
			return
		case <-time.After(every):
		}
		s.askCaps(w, c)
	}
}

// askCaps asks the worker for its capabilities now: its engine may have
// come or gone, a step may have cached an image.
func (s *Server) askCaps(w *worker, c pb.AgentClient) {
	ctx, cancel := context.WithTimeout(s.ctx, 30*time.Second)
	caps, err := c.GetCapabilities(ctx, &pb.GetCapabilitiesRequest{})
	cancel()
	if err != nil {
		return
	}
	had := w.hasDocker()
	w.setCaps(caps)
	if !had && caps.GetDocker().GetAvailable() {
		s.kick()
	}
}

// errWorkerGone: a step's worker was forgotten, or has been away longer
// than Config.WorkerLostAfter.
var errWorkerGone = errors.New("worker gone")

// waitClient returns the worker's client, waiting for its next connection
// when it has none: a dropped link delays a step, it does not fail it.
// A worker away for lostAfter (0: for ever) or forgotten is errWorkerGone.
func (w *worker) waitClient(ctx context.Context, lostAfter time.Duration) (pb.AgentClient, <-chan struct{}, error) {
	for {
		w.mu.Lock()
		c, done, ch, since, forgotten := w.client, w.done, w.connected, w.downSince, w.forgotten
		w.mu.Unlock()
		switch {
		case c != nil:
			return c, done, nil
		case forgotten:
			return nil, nil, fmt.Errorf("%w: worker %s was removed from this server", errWorkerGone, w.rec.Name)
		}
		var timeout <-chan time.Time
		if lostAfter > 0 {
			left := time.Until(since.Add(lostAfter))
			if left <= 0 {
				return nil, nil, fmt.Errorf("%w: worker %s has been away since %s, longer than %s", errWorkerGone, w.rec.Name, since.Format(time.RFC3339), lostAfter)
			}
			t := time.NewTimer(left)
			timeout = t.C
			defer t.Stop() // one a disconnection at most: the loop is short
		}
		select {
		case <-ch:
		case <-w.gone:
		case <-timeout:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
}

// admit takes a polling agent's new connection: its name, pools and slots
// come from its capabilities; a worker is known by its thumbprint.
func (s *Server) admit(pc *transport.PollingConn) {
	client := pb.NewAgentClient(pc.Client)
	ctx, cancel := context.WithTimeout(s.ctx, 30*time.Second)
	caps, err := client.GetCapabilities(ctx, &pb.GetCapabilitiesRequest{})
	cancel()
	if err != nil {
		s.log.Warn("polling agent did not answer GetCapabilities", "remote", pc.Remote, "error", err)
		pc.Client.Close()
		return
	}
	name := caps.GetName()
	if name == "" {
		name = pc.Thumbprint[:12]
	}
	rec := WorkerRecord{Name: name, Thumbprint: pc.Thumbprint, Pools: caps.GetPools(), Labels: caps.GetLabels()}
	s.mu.Lock()
	w := s.workers[name]
	if w != nil && w.rec.Thumbprint != pc.Thumbprint {
		s.mu.Unlock()
		s.log.Warn("refused a polling agent: its name belongs to another worker", "name", name, "thumbprint", pc.Thumbprint, "known_thumbprint", w.rec.Thumbprint)
		pc.Client.Close()
		return
	}
	if w == nil {
		w = newWorker(rec)
		s.workers[name] = w
	}
	s.mu.Unlock()
	if err := s.db.PutWorker(rec); err != nil {
		s.log.Warn("cannot record a worker", "worker", name, "error", err)
	}
	s.connect(w, client, pc.Done, caps)
	s.log.Info("worker connected", "worker", name, "remote", pc.Remote, "slots", caps.GetMaxConcurrentSteps(), "pools", rec.Pools)
	go func() {
		<-pc.Done
		s.disconnect(w, pc.Done)
		s.log.Info("worker disconnected; waiting for its next connection", "worker", name)
	}()
}

// inTarget reports whether w is the worker rec asks for, or of its pool.
// The caller holds w.mu.
func (w *worker) inTarget(rec StepRecord) bool {
	if rec.Worker != "" {
		return w.rec.Name == rec.Worker
	}
	return slices.Contains(w.rec.Pools, rec.Pool)
}

// hasLabels reports whether w has every one of labels. The caller holds w.mu.
func (w *worker) hasLabels(labels map[string]string) bool {
	for k, v := range labels {
		if have, ok := w.rec.Labels[k]; !ok || have != v {
			return false
		}
	}
	return true
}

// labelList writes labels as the agent's flags take them: "k=v, k2=v2".
func labelList(labels map[string]string) string {
	kvs := make([]string, 0, len(labels))
	for k, v := range labels {
		kvs = append(kvs, k+"="+v)
	}
	slices.Sort(kvs)
	return strings.Join(kvs, ", ")
}
