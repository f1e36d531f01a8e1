package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/docker/go-units"

	"stevedore/internal/steplog"
)

const (
	// maskText replaces every sensitive value in the log.
	maskText = "********"
	// readSize is how much of a pipe is read at once: a pipe's capacity.
	readSize = 64 << 10
	// maxServiceLine is how long a stdout line that holds a service message
	// may grow before it is cut into records: longer than steplog.MaxData,
	// so that a large sensitive value (a certificate, say) is not cut into
	// pieces and written to the log, but still bounded.
	maxServiceLine = 1 << 20
	// maxMessage bounds a progress, failStep or resultMessage message
	// (Result.Message, Result.ResultMessage).
	maxMessage = 8 << 10
)

// output turns the script's stdout and stderr into output.log records. One
// output, with one Writer, serves both pipes, so that sequence numbers
// follow the order in which lines arrived and a mask added on stdout applies
// to stderr at once; its mutex also orders the runner's own lines (from the
// signal handler) among the script's.
type output struct {
	mu      sync.Mutex
	w       *steplog.Writer
	masks   masker
	stepKey []byte    // seals sensitive output variables; may be empty
	levels  bool      // the agent reads levels (stepspec.Spec.LogLevels)
	workDir string    // relative artifact paths are relative to it
	now     time.Time // the time of the records being written

	failMessage   string // the last failStep's message
	failed        bool   // a failStep was seen
	resultMessage string // the last resultMessage's message
	hasResult     bool   // a resultMessage was seen
	err           error  // the first error writing output.log; later records are dropped
	closed        bool   // finish was called: nothing more is written

	// limit bounds the bytes of the script's output kept in output.log
	// (stepspec.Spec.LogLimit); 0: no bound. Past it the output is
	// counted, and the log says so where it was cut and at the end.
	limit, kept          int64
	cut                  bool
	dropped, droppedRecs int64
}

func newOutput(w io.Writer, firstSeq uint64, limit int64) *output {
	return &output{w: steplog.NewWriter(w, firstSeq), limit: limit}
}

// script writes a record of the script's own output, within the log
// limit. The caller holds o.mu.
func (o *output) script(kind steplog.Kind, level steplog.Level, partial bool, data []byte) {
	if o.limit > 0 {
		if o.cut || o.kept+int64(len(data)) > o.limit {
			if !o.cut {
				o.cut = true
				o.runnerLineLocked("the step's output reached its log limit of %s: what it writes from here on is counted, not kept; service messages still work", units.BytesSize(float64(o.limit)))
			}
			o.dropped += int64(len(data))
			o.droppedRecs++
			return
		}
		o.kept += int64(len(data))
	}
	o.append(kind, level, partial, data)
}

// append writes one stdout or stderr record (masked) or an event. The caller
// holds o.mu.
func (o *output) append(kind steplog.Kind, level steplog.Level, partial bool, data []byte) {
	if o.err != nil || o.closed {
		return
	}
	if kind != steplog.KindEvent {
		data = o.masks.apply(data)
	}
	if _, err := o.w.AppendLevel(kind, level, partial, o.now, data); err != nil {
		o.err = err
	}
}

// flush makes the records written so far visible to a reader of the file.
// The caller holds o.mu.
func (o *output) flush() {
	if o.err != nil || o.closed {
		return
	}
	if err := o.w.Flush(); err != nil {
		o.err = err
	}
}

// runnerLine writes a message of the runner itself as a stderr record: the
// step's log is where its user looks.
func (o *output) runnerLine(format string, args ...any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.now = time.Now()
	o.runnerLineLocked(format, args...)
	o.flush()
}

func (o *output) runnerLineLocked(format string, args ...any) {
	o.append(steplog.KindStderr, steplog.LevelDefault, false, []byte("stevedore-step: "+fmt.Sprintf(format, args...)))
}

// event records what a service message asked for. The caller holds o.mu.
func (o *output) event(ev steplog.Event) {
	switch ev.Type {
	case evSetVariable:
		if !o.setVariable(&ev) {
			return
		}
	case evCreateArtifact:
		if !filepath.IsAbs(ev.Path) {
			ev.Path = filepath.Join(o.workDir, ev.Path)
		}
		ev.Path = filepath.Clean(ev.Path)
		if ev.Name == "" {
			ev.Name = filepath.Base(ev.Path)
		}
	case evMask:
		o.masks.add(ev.Value)
		ev.Value = "" // the event records that a mask was added, never what
	case evProgress:
		ev.Message = truncate(o.masks.applyString(ev.Message), maxMessage)
	case evFailStep:
		ev.Message = truncate(o.masks.applyString(ev.Message), maxMessage)
		o.failMessage, o.failed = ev.Message, true
	case evResultMessage:
		ev.Message = truncate(o.masks.applyString(ev.Message), maxMessage)
		o.resultMessage, o.hasResult = ev.Message, true
	}
	data, err := json.Marshal(ev)
	if err != nil { // cannot happen: the event holds strings and numbers
		o.runnerLineLocked("cannot record a %s event: %v", ev.Type, err)
		return
	}
	if len(data) > steplog.MaxData {
		// An event is always one record, so that a reader never has to
		// join pieces of JSON.
		o.runnerLineLocked("the %s event %q was not recorded: %d bytes, at most %d", ev.Type, ev.Name, len(data), steplog.MaxData)
		return
	}
	if o.cut && (ev.Type == evProgress || ev.Type == evMask) {
		// Past the log limit a progress or mask record only tells the log
		// (the mask itself is applied above); a loop of them must not fill
		// the disk. Variables, artifacts and failures are results: kept.
		o.dropped += int64(len(data))
		o.droppedRecs++
		return
	}
	o.append(steplog.KindEvent, steplog.LevelDefault, false, data)
}

// setVariable seals a sensitive value (and masks it from now on), and
// reports whether the event is to be recorded. A value that is not declared
// sensitive but holds a masked value is sealed too: output.log must not hold
// a secret in any form.
func (o *output) setVariable(ev *steplog.Event) bool {
	if ev.Sensitive {
		o.masks.add(ev.Value)
	} else if o.masks.containedIn(ev.Value) {
		if len(o.stepKey) == 0 {
			ev.Value = o.masks.applyString(ev.Value)
			o.runnerLineLocked("output variable %q holds a sensitive value: it was masked", ev.Name)
			return true
		}
		ev.Sensitive = true
		o.runnerLineLocked("output variable %q holds a sensitive value: it was recorded as sensitive", ev.Name)
	}
	if !ev.Sensitive {
		return true
	}
	if len(o.stepKey) == 0 {
		o.runnerLineLocked("sensitive output variable %q was not recorded: the runner was given no step key", ev.Name)
		return false
	}
	sealed, err := steplog.SealValue(o.stepKey, ev.Value)
	if err != nil {
		o.runnerLineLocked("sensitive output variable %q was not recorded: %v", ev.Name, err)
		return false
	}
	ev.Value = sealed
	return true
}

// finish flushes the records and syncs the file: result.json, written next,
// tells the agent that every record is in output.log.
func (o *output) finish(f *os.File) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.cut {
		o.now = time.Now()
		o.runnerLineLocked("%d bytes of output in %d records were not kept: the log limit is %s", o.dropped, o.droppedRecs, units.BytesSize(float64(o.limit)))
	}
	o.flush()
	o.closed = true
	if o.err != nil {
		return o.err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", f.Name(), err)
	}
	return nil
}

// stream cuts one pipe's bytes into lines.
type stream struct {
	o    *output
	kind steplog.Kind // KindStdout or KindStderr
	// pending is the start of a line whose '\n' has not arrived yet.
	pending []byte
	// cont: pending continues a line already cut into Partial records.
	cont bool
	// level is the level of the lines read now, set by the level switches
	// on stdout; stderr's stays LevelDefault.
	level steplog.Level
}

// chunk logs a chunk read from the pipe, and flushes: a reader of
// output.log sees the lines within milliseconds, but there is no flush per
// line when a chunk holds many.
func (s *stream) chunk(data []byte) {
	s.o.mu.Lock()
	defer s.o.mu.Unlock()
	s.o.now = time.Now() // under the lock: times never go back as sequences go up
	s.feed(data)
	s.o.flush()
}

// close ends the stream at the pipe's end (or when the runner stops reading).
func (s *stream) close() {
	s.o.mu.Lock()
	defer s.o.mu.Unlock()
	s.o.now = time.Now()
	s.end()
	s.o.flush()
}

// feed processes a chunk read from the pipe. The caller holds s.o.mu.
func (s *stream) feed(chunk []byte) {
	for len(chunk) > 0 {
		i := bytes.IndexByte(chunk, '\n')
		if i < 0 {
			s.add(chunk)
			return
		}
		line := chunk[:i]
		chunk = chunk[i+1:]
		if len(s.pending) == 0 && !s.cont {
			s.line(line, false) // the common case: no copy
			continue
		}
		s.add(line)
		s.line(s.pending, s.cont)
		s.pending, s.cont = s.pending[:0], false
	}
}

// add appends b to the pending line. A line that outgrows steplog.MaxData
// (maxServiceLine for what may be a service message) is written as Partial
// pieces as it goes, so the memory a line takes stays bounded.
func (s *stream) add(b []byte) {
	for len(b) > 0 {
		limit := steplog.MaxData
		if len(s.pending) >= steplog.MaxData {
			if len(s.pending) >= maxServiceLine || !s.mayBeService(s.pending) {
				s.o.script(s.kind, s.level, true, s.pending)
				s.pending, s.cont = s.pending[:0], true
				continue
			}
			limit = maxServiceLine
		}
		n := min(limit-len(s.pending), len(b))
		s.pending = append(s.pending, b[:n]...)
		b = b[n:]
	}
}

// end writes what is left of a line at the end of the pipe: output that did
// not end with a newline. The caller holds s.o.mu.
func (s *stream) end() {
	if len(s.pending) > 0 {
		// The end of the output ends a service message as well as a '\n'.
		if !s.service(s.pending, s.cont) {
			s.o.script(s.kind, s.level, true, s.pending)
		}
	}
	s.pending, s.cont = nil, false
}

// line handles one complete line, without its '\n'.
func (s *stream) line(data []byte, cont bool) {
	if !s.service(data, cont) {
		s.o.script(s.kind, s.level, false, data)
	}
}

func (s *stream) mayBeService(data []byte) bool {
	return s.kind == steplog.KindStdout && !s.cont && indexServicePrefix(data) >= 0
}

// service handles a stdout line that ends with a service message, and
// reports whether it did. Text before the message (output that did not end
// with a newline before a helper was called) is kept as a Partial record,
// at the level it was written with; a level switch takes effect after it.
func (s *stream) service(data []byte, cont bool) bool {
	if s.kind != steplog.KindStdout || cont {
		return false
	}
	for i := indexServicePrefix(data); i >= 0; {
		ev, ok := parseServiceMessage(data[i:])
		level, isSwitch := levelSwitches[ev.Type]
		if ok && isSwitch && !s.o.levels {
			// The agent would take a level for corruption: the switch
			// stays a line, as before levels existed.
			ok = false
		}
		if ok {
			if i > 0 {
				s.o.script(s.kind, s.level, true, data[:i])
			}
			if isSwitch {
				s.level = level
			} else {
				s.o.event(ev)
			}
			return true
		}
		next := indexServicePrefix(data[i+2:])
		if next < 0 {
			break
		}
		i += 2 + next
	}
	return false
}

// truncate cuts s to at most n bytes, on a UTF-8 character's boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
