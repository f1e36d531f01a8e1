package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"stevedore/internal/steplog"
	pb "stevedore/proto/stevedore/v1"
)

// indexEvery: one remembered offset per this many records keeps memory
// bounded however long the log, while a reader seeks near any sequence.
const indexEvery = 256

// Follow intervals: quick while lines flow, so a long-poll hears of a new
// line within milliseconds; slower when idle. Polling rather than inotify
// works on every file system a state dir may live on.
const (
	followFast = 5 * time.Millisecond
	followIdle = 50 * time.Millisecond
)

// runnerLog follows a step's output.log as the runner appends to it.
type runnerLog struct {
	path  string
	first uint64 // sequence of the runner's first record

	mu     sync.Mutex
	f      *os.File
	off    int64   // where following resumes
	count  uint64  // complete records followed so far
	index  []int64 // offset of record first+k*indexEvery
	broken error   // framing error: the log cannot be followed further
}

func newRunnerLog(path string, first uint64) *runnerLog {
	return &runnerLog{path: path, first: first}
}

// lastSeq is the sequence of the last record followed (first-1 if none).
func (l *runnerLog) lastSeq() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.first - 1 + l.count
}

func (l *runnerLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
}

// poll reads the complete records appended since the last poll, handing
// each event record to onEvent. It returns how many records it read.
// onEvent runs after l.mu is released: it takes the step's mutex, which
// GetStatus holds while it asks lastSeq, and the two orders would deadlock.
// Polls of one log are sequential, so events still arrive in order.
func (l *runnerLog) poll(onEvent func(seq uint64, ev steplog.Event)) (int, error) {
	type event struct {
		seq uint64
		ev  steplog.Event
	}
	var events []event
	defer func() {
		for _, e := range events {
			onEvent(e.seq, e.ev)
		}
	}()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.broken != nil {
		return 0, l.broken
	}
	if l.f == nil {
		f, err := os.Open(l.path)
		if errors.Is(err, fs.ErrNotExist) {
			return 0, nil // the runner has not created it yet
		}
		if err != nil {
			return 0, fmt.Errorf("open %s: %w", l.path, err)
		}
		l.f = f
	}
	r := steplog.NewReader(l.f, l.off)
	n := 0
	for {
		rec, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			l.broken = fmt.Errorf("%s: %w", l.path, err)
			return n, l.broken
		}
		if l.count%indexEvery == 0 {
			l.index = append(l.index, l.off)
		}
		l.off = r.Offset()
		l.count++
		n++
		if rec.Kind == steplog.KindEvent && onEvent != nil {
			var ev steplog.Event
			if json.Unmarshal(rec.Data, &ev) == nil {
				events = append(events, event{rec.Seq, ev})
			}
		}
	}
	return n, nil
}

// read returns the followed records with sequence > after as log lines, at
// most maxLines of them and about maxBytes of text.
func (l *runnerLog) read(after uint64, maxLines, maxBytes int) ([]*pb.LogLine, error) {
	l.mu.Lock()
	first, count := l.first, l.count
	var start int64
	var startSeq uint64
	if after+1 >= first && after+1 < first+count {
		k := (after + 1 - first) / indexEvery
		start, startSeq = l.index[k], first+k*indexEvery
	}
	l.mu.Unlock()
	if count == 0 || after+1 >= first+count {
		return nil, nil
	}
	// A handle of its own: the follower's is closed once the step has
	// ended, so a completed step no client has collected holds no file.
	f, err := os.Open(l.path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if after+1 < first {
		start, startSeq = 0, first
	}
	r := steplog.NewReader(f, start)
	var out []*pb.LogLine
	size := 0
	for seq := startSeq; seq < first+count && len(out) < maxLines && size < maxBytes; seq++ {
		rec, err := r.Next()
		if err != nil {
			return out, fmt.Errorf("read %s at sequence %d: %w", l.path, seq, err)
		}
		if rec.Seq <= after {
			continue
		}
		line := &pb.LogLine{Sequence: rec.Seq, Time: timestamppb.New(rec.Time), Text: rec.Data, Partial: rec.Partial, Level: logLevel(rec.Level)}
		switch rec.Kind {
		case steplog.KindStdout:
			line.Source = pb.LogSource_LOG_SOURCE_STDOUT
		case steplog.KindStderr:
			line.Source = pb.LogSource_LOG_SOURCE_STDERR
		default:
			line.Source = pb.LogSource_LOG_SOURCE_AGENT
			line.Text = []byte(describeEvent(rec.Data))
			line.Partial = false
		}
		size += len(line.Text)
		out = append(out, line)
	}
	return out, nil
}

// logLevel is a record's level on the wire. The numbers are the same by
// contract (agent.proto's LogLevel); the switch keeps a level the wire does
// not know from passing as a number no client can name.
func logLevel(l steplog.Level) pb.LogLevel {
	switch l {
	case steplog.LevelVerbose:
		return pb.LogLevel_LOG_LEVEL_VERBOSE
	case steplog.LevelHighlight:
		return pb.LogLevel_LOG_LEVEL_HIGHLIGHT
	case steplog.LevelWait:
		return pb.LogLevel_LOG_LEVEL_WAIT
	case steplog.LevelWarning:
		return pb.LogLevel_LOG_LEVEL_WARNING
	case steplog.LevelError:
		return pb.LogLevel_LOG_LEVEL_ERROR
	}
	return pb.LogLevel_LOG_LEVEL_UNSPECIFIED
}

// describeEvent is how an event record reads in the step log.
func describeEvent(data []byte) string {
	var ev steplog.Event
	if err := json.Unmarshal(data, &ev); err != nil {
		return "unreadable service message record"
	}
	switch ev.Type {
	case "setVariable":
		if ev.Sensitive {
			return fmt.Sprintf("output variable %q set (sensitive)", ev.Name)
		}
		return fmt.Sprintf("output variable %q set", ev.Name)
	case "createArtifact":
		return fmt.Sprintf("artifact %q: %s", ev.Name, ev.Path)
	case "progress":
		return fmt.Sprintf("progress %d%%: %s", ev.Percentage, ev.Message)
	case "failStep":
		return "step failed: " + ev.Message
	case "resultMessage":
		return "result message: " + ev.Message
	case "mask":
		return "a value will be masked from here on"
	}
	return "service message " + ev.Type
}
