package agent

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"stevedore/internal/version"
	pb "stevedore/proto/stevedore/v1"
)

// metrics are an agent's Prometheus metrics. Each agent has its own
// registry rather than the global default one, so several agents in one
// process (tests, the server's built-in worker) do not collide. Labels are
// bounded sets (outcomes, pull results); never a ticket or an image.
type metrics struct {
	reg *prometheus.Registry

	stepsStarted  prometheus.Counter
	stepsFinished *prometheus.CounterVec
	stepDuration  *prometheus.HistogramVec
	logLines      prometheus.Counter
	pulls         *prometheus.CounterVec
	pullDuration  *prometheus.HistogramVec
}

const metricsNamespace = "stevedore"

// newMetrics registers the agent's metrics. The gauges are read at scrape
// time from the agent's own state, so they cannot drift from it.
func newMetrics(a *Agent) *metrics {
	opts := func(name, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: metricsNamespace, Subsystem: "agent", Name: name, Help: help}
	}
	m := &metrics{
		reg: prometheus.NewRegistry(),
		stepsStarted: prometheus.NewCounter(prometheus.CounterOpts(opts("steps_started_total",
			"Steps accepted under a new ticket."))),
		stepsFinished: prometheus.NewCounterVec(prometheus.CounterOpts(opts("steps_finished_total",
			"Steps completed, by outcome (SUCCEEDED, FAILED, CANCELLED, TIMED_OUT, ...).")), []string{"outcome"}),
		stepDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Subsystem: "agent", Name: "step_duration_seconds",
			Help: "Time from a step's acceptance to its completion (waits and pulls included), by outcome.",
			// 0.5 s to about 4.5 h: deployment steps range from a quick
			// script to a long migration.
			Buckets: prometheus.ExponentialBuckets(0.5, 2, 16),
		}, []string{"outcome"}),
		logLines: prometheus.NewCounter(prometheus.CounterOpts(opts("log_lines_total",
			"Log lines the agent followed or wrote for its steps (a step reattached after a restart is read again)."))),
		pulls: prometheus.NewCounterVec(prometheus.CounterOpts(opts("image_pulls_total",
			"Image pulls (one per shared pull, however many steps waited for it), by result: success, failed, timeout, cancelled.")), []string{"result"}),
		pullDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Subsystem: "agent", Name: "image_pull_duration_seconds",
			Help:    "How long image pulls took, retries included, by result.",
			Buckets: prometheus.ExponentialBuckets(0.25, 2, 14), // 0.25 s to about 34 min
		}, []string{"result"}),
	}
	// Known outcomes and results start at 0, so that rate() and absent()
	// work before the first one happens.
	for v, name := range pb.Outcome_name {
		if pb.Outcome(v) != pb.Outcome_OUTCOME_UNSPECIFIED {
			m.stepsFinished.WithLabelValues(strings.TrimPrefix(name, "OUTCOME_"))
		}
	}
	for _, r := range []string{"success", "failed", "timeout", "cancelled"} {
		m.pulls.WithLabelValues(r)
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts(opts(name, help)), f)
	}
	m.reg.MustRegister(
		m.stepsStarted, m.stepsFinished, m.stepDuration, m.logLines, m.pulls, m.pullDuration,
		gauge("steps_running", "Steps holding a concurrency slot.", func() float64 { return float64(a.slots.running()) }),
		gauge("steps_waiting", "Steps waiting for a concurrency slot or their isolation mutex.", func() float64 {
			return float64(a.slots.waiting() + a.isolation.waiting())
		}),
		gauge("max_concurrent_steps", "The most steps the agent runs at once.", func() float64 { return float64(a.cfg.MaxSteps) }),
		gauge("cached_images", "Images the agent pulled and still records.", func() float64 { return float64(len(a.images.All())) }),
		gauge("cached_image_bytes", "Total size of the images the agent pulled and still records.", func() float64 {
			var n int64
			for _, r := range a.images.All() {
				n += r.Size
			}
			return float64(n)
		}),
		gauge("docker_engine_available", "1 if the Docker Engine answers a ping now, else 0 (container steps need it).", a.dockerUp),
		gauge("accepting_steps", "1 if the agent takes new steps now, else 0 (draining, shutting down, or below its free-disk threshold).", func() float64 {
			if a.notAccepting() != "" {
				return 0
			}
			return 1
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Subsystem: "agent", Name: "info", Help: "Always 1; the agent's version and wire protocol version as labels.",
			ConstLabels: prometheus.Labels{"version": version.Version, "protocol": strconv.Itoa(version.Protocol)},
		}, func() float64 { return 1 }),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// MetricsHandler serves the agent's metrics in the Prometheus exposition
// format.
func (a *Agent) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{ErrorLog: a.log.Named("metrics").StandardLogger(nil)})
}

// dockerUp pings the engine at scrape time: the last known state would
// miss an engine that stopped since.
func (a *Agent) dockerUp() float64 {
	ctx, cancel := context.WithTimeout(a.ctx, 3*time.Second)
	defer cancel()
	if a.dockerAvailable(ctx) != nil {
		return 0
	}
	return 1
}

// stepFinished counts a step's end; call once per step (finish is idempotent).
func (m *metrics) stepFinished(outcome pb.Outcome, took time.Duration) {
	o := strings.TrimPrefix(outcome.String(), "OUTCOME_")
	m.stepsFinished.WithLabelValues(o).Inc()
	m.stepDuration.WithLabelValues(o).Observe(took.Seconds())
}

// pullEnded is the coordinator's OnPull hook.
func (m *metrics) pullEnded(result string, took time.Duration) {
	m.pulls.WithLabelValues(result).Inc()
	m.pullDuration.WithLabelValues(result).Observe(took.Seconds())
}

// waiting is the number of steps queued for a slot.
func (s *slots) waiting() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queue)
}

// waiting is the number of steps queued for any isolation mutex.
func (m *isolation) waiting() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, l := range m.locks {
		n += len(l.queue)
	}
	return n
}
