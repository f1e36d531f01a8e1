package server

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"stevedore/internal/version"
	pb "stevedore/proto/stevedore/v1"
)

// serverMetrics are the server's Prometheus metrics, in a registry of its
// own (not the global one), so a server and its built-in worker, or several
// servers in a test, keep theirs apart. Labels are bounded sets: never a
// step, worker or image.
type serverMetrics struct {
	reg *prometheus.Registry

	submitted prometheus.Counter
	completed *prometheus.CounterVec
	logLines  prometheus.Counter
	pruned    *prometheus.CounterVec
	requeued  *prometheus.CounterVec
}

func newServerMetrics(s *Server) *serverMetrics {
	m := &serverMetrics{
		reg: prometheus.NewRegistry(),
		submitted: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "stevedore", Subsystem: "server",
			Name: "steps_submitted_total", Help: "Steps queued (a repeated submission key is not counted again)."}),
		completed: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "stevedore", Subsystem: "server",
			Name: "steps_completed_total", Help: "Steps completed, by outcome (SUCCEEDED, FAILED, CANCELLED, ...)."}, []string{"outcome"}),
		logLines: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "stevedore", Subsystem: "server",
			Name: "task_log_lines_total", Help: "Log lines stored in task logs."}),
		pruned: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "stevedore", Subsystem: "server",
			Name: "steps_pruned_total", Help: "Completed steps removed with their task logs and artifacts, by what removed them (age: --retention, size: --max-storage)."}, []string{"by"}),
	}
	for _, by := range []string{"age", "size"} {
		m.pruned.WithLabelValues(by)
	}
	m.requeued = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "stevedore", Subsystem: "server",
		Name: "steps_requeued_total", Help: "Steps queued again because their worker did not take them (worker_gone: it went away before the step was sent; not_accepting: it refused, draining or low on disk)."}, []string{"why"})
	for _, why := range []string{requeueWorkerGone, requeueRefused} {
		m.requeued.WithLabelValues(why)
	}
	// Known outcomes start at 0, so that rate() works before the first one.
	for v, name := range pb.Outcome_name {
		if pb.Outcome(v) != pb.Outcome_OUTCOME_UNSPECIFIED {
			m.completed.WithLabelValues(strings.TrimPrefix(name, "OUTCOME_"))
		}
	}
	m.reg.MustRegister(m.submitted, m.completed, m.logLines, m.pruned, m.requeued, &stateCollector{s: s},
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "stevedore", Subsystem: "server", Name: "info",
			Help:        "Always 1; the server's version and wire protocol version as labels.",
			ConstLabels: prometheus.Labels{"version": version.Version, "protocol": strconv.Itoa(version.Protocol)}},
			func() float64 { return 1 }),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// MetricsHandler serves the server's metrics in the Prometheus exposition
// format; Handler routes GET /metrics to it without credentials.
func (s *Server) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{
		ErrorLog: s.log.Named("metrics").StandardLogger(nil), ErrorHandling: promhttp.ContinueOnError,
	})
}

// stateCollector computes the queue and worker gauges at scrape time from
// the server's own records, so they cannot drift from what the API shows.
type stateCollector struct{ s *Server }

var (
	descQueued = prometheus.NewDesc("stevedore_server_steps_queued",
		"Steps waiting to be dispatched to a worker.", nil, nil)
	descRunning = prometheus.NewDesc("stevedore_server_steps_running",
		"Steps dispatched to a worker and not yet complete.", nil, nil)
	descKnown = prometheus.NewDesc("stevedore_server_workers_known",
		"Workers the server knows (registered or ever connected).", nil, nil)
	descConnected = prometheus.NewDesc("stevedore_server_workers_connected",
		"Workers connected now.", nil, nil)
	descSlots = prometheus.NewDesc("stevedore_server_slots",
		"Step slots of the connected workers.", nil, nil)
	descFree = prometheus.NewDesc("stevedore_server_free_slots",
		"Step slots of the connected workers not taken by this server's steps.", nil, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descQueued, descRunning, descKnown, descConnected, descSlots, descFree} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	// From the queue index and the drivers' counts: a scrape reads no step.
	queued, err := c.s.db.CountQueued()
	if err != nil {
		// The database is closed (shutting down): leave the queue gauge out
		// rather than report a false 0.
		c.s.log.Debug("metrics: cannot count queued steps", "error", err)
	} else {
		ch <- prometheus.MustNewConstMetric(descQueued, prometheus.GaugeValue, float64(queued))
	}
	workers := c.s.Workers()
	var connected, slots, free, running int
	for _, w := range workers {
		running += w.Running
		if w.Connected {
			connected++
			slots += w.Slots
			free += w.FreeSlots
		}
	}
	ch <- prometheus.MustNewConstMetric(descRunning, prometheus.GaugeValue, float64(running))
	ch <- prometheus.MustNewConstMetric(descKnown, prometheus.GaugeValue, float64(len(workers)))
	ch <- prometheus.MustNewConstMetric(descConnected, prometheus.GaugeValue, float64(connected))
	ch <- prometheus.MustNewConstMetric(descSlots, prometheus.GaugeValue, float64(slots))
	ch <- prometheus.MustNewConstMetric(descFree, prometheus.GaugeValue, float64(free))
}
