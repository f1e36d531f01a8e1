package server

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"
	"unicode/utf8"

	pb "stevedore/proto/stevedore/v1"
)

// LogEntry is one line of a step's task log: a JSON object per line, the
// text as a string when it is UTF-8 and as base64 (Bytes) when it is not,
// so that nothing is lost and the file stays readable.
type LogEntry struct {
	Sequence uint64    `json:"seq"`
	Source   string    `json:"source"` // stdout, stderr, agent
	Time     time.Time `json:"time"`
	Text     string    `json:"text,omitempty"`
	Bytes    []byte    `json:"bytes,omitempty"`
	Partial  bool      `json:"partial,omitempty"`
	// Level is the line's level (verbose, highlight, wait, warning,
	// error); empty for the ordinary level, so that most lines, and every
	// task log written before levels existed, have none.
	Level string `json:"level,omitempty"`
}

// levelNames are the task log's names of the wire's levels.
var levelNames = map[pb.LogLevel]string{
	pb.LogLevel_LOG_LEVEL_VERBOSE:   "verbose",
	pb.LogLevel_LOG_LEVEL_HIGHLIGHT: "highlight",
	pb.LogLevel_LOG_LEVEL_WAIT:      "wait",
	pb.LogLevel_LOG_LEVEL_WARNING:   "warning",
	pb.LogLevel_LOG_LEVEL_ERROR:     "error",
}

// LogLevel is the entry's level on the wire; an unknown name (a newer
// server's) reads as the ordinary level, so the line is still shown.
func (e LogEntry) LogLevel() pb.LogLevel {
	for l, name := range levelNames {
		if name == e.Level {
			return l
		}
	}
	return pb.LogLevel_LOG_LEVEL_UNSPECIFIED
}

// Content is the line's bytes.
func (e LogEntry) Content() []byte {
	if e.Bytes != nil {
		return e.Bytes
	}
	return []byte(e.Text)
}

func entryOf(l *pb.LogLine) LogEntry {
	e := LogEntry{Sequence: l.GetSequence(), Time: l.GetTime().AsTime(), Partial: l.GetPartial(), Level: levelNames[l.GetLevel()]}
	switch l.GetSource() {
	case pb.LogSource_LOG_SOURCE_STDOUT:
		e.Source = "stdout"
	case pb.LogSource_LOG_SOURCE_STDERR:
		e.Source = "stderr"
	default:
		e.Source = "agent"
	}
	if utf8.Valid(l.GetText()) {
		e.Text = string(l.GetText())
	} else {
		e.Bytes = l.GetText()
	}
	return e
}

// taskLog is a step's task log file, appended by the step's driver only.
type taskLog struct {
	path string
	mu   sync.Mutex
	last uint64 // highest sequence in the file
}

// openTaskLog opens path, learning the last sequence it holds. A torn last
// line (a crash mid-write) is cut off, so it is fetched again.
func openTaskLog(path string) (*taskLog, error) {
	t := &taskLog{path: path}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return t, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var good int64
	r := bufio.NewReader(f)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			break // EOF, or a torn line without its newline
		}
		var e LogEntry
		if json.Unmarshal(line, &e) != nil {
			break
		}
		good += int64(len(line))
		t.last = e.Sequence
	}
	if err := os.Truncate(path, good); err != nil {
		return nil, fmt.Errorf("task log %s: %w", path, err)
	}
	return t, nil
}

// append writes the lines after t.last, durably, and returns the new last
// sequence. Lines at or below it (a repeated reply) are skipped, so no line
// is stored twice.
func (t *taskLog) append(lines []*pb.LogLine) (uint64, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var buf []byte
	last := t.last
	for _, l := range lines {
		if l.GetSequence() <= last {
			continue
		}
		if l.GetSequence() != last+1 {
			return t.last, fmt.Errorf("task log %s: sequence %d after %d", filepath.Base(t.path), l.GetSequence(), last)
		}
		b, err := json.Marshal(entryOf(l))
		if err != nil {
			return t.last, err
		}
		buf = append(append(buf, b...), '\n')
		last = l.GetSequence()
	}
	if len(buf) == 0 {
		return t.last, nil
	}
	f, err := os.OpenFile(t.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return t.last, err
	}
	defer f.Close()
	if _, err := f.Write(buf); err != nil {
		return t.last, err
	}
	if err := f.Sync(); err != nil {
		return t.last, err
	}
	t.last = last
	return last, nil
}

// readTaskLog returns up to max entries with sequence > after. Sequences
// in the file rise, so it seeks to the first wanted line by binary search
// over byte offsets: following a long log costs the lines read, not the
// file's length.
func readTaskLog(path string, after uint64, max int) ([]LogEntry, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	start, err := seekAfter(f, fi.Size(), after)
	if err != nil {
		return nil, err
	}
	var out []LogEntry
	r := bufio.NewReaderSize(io.NewSectionReader(f, start, fi.Size()-start), 64<<10)
	for len(out) < max {
		line, err := r.ReadBytes('\n')
		if err != nil {
			break
		}
		if seq, ok := seqOf(line); ok && seq <= after {
			continue // skipped without decoding the whole line
		}
		var e LogEntry
		if json.Unmarshal(line, &e) != nil {
			break
		}
		if e.Sequence > after {
			out = append(out, e)
		}
	}
	return out, nil
}

// seqOf reads the sequence from a line's start: LogEntry's JSON begins
// with it. ok is false for any other shape (then the line is decoded).
func seqOf(line []byte) (uint64, bool) {
	const prefix = `{"seq":`
	if len(line) <= len(prefix) || string(line[:len(prefix)]) != prefix {
		return 0, false
	}
	var seq uint64
	i := len(prefix)
	for ; i < len(line) && line[i] >= '0' && line[i] <= '9'; i++ {
		seq = seq*10 + uint64(line[i]-'0')
	}
	if i == len(prefix) || i >= len(line) || line[i] != ',' || i-len(prefix) > 19 {
		return 0, false
	}
	return seq, true
}

// seekLinear is the span below which seekAfter reads on instead of halving.
const seekLinear = 64 << 10

// seekAfter returns an offset of a line start at or before the first line
// with a sequence above after.
func seekAfter(f io.ReaderAt, size int64, after uint64) (int64, error) {
	lo, hi := int64(0), size // the answer is in [lo, hi)
	for hi-lo > seekLinear {
		mid := lo + (hi-lo)/2
		start, seq, ok, err := lineAt(f, mid, size)
		if err != nil {
			return 0, err
		}
		if !ok || start >= hi {
			hi = mid
			continue
		}
		if seq <= after {
			lo = start
		} else {
			hi = mid
		}
	}
	return lo, nil
}

// lineAt finds the first line starting after off and returns its start
// and sequence; ok is false when no whole line starts there.
func lineAt(f io.ReaderAt, off, size int64) (start int64, seq uint64, ok bool, err error) {
	// Lines are short as a rule: one small read finds the next line's
	// start and its sequence.
	var buf [4096]byte
	n, _ := f.ReadAt(buf[:min(int64(len(buf)), size-off)], off)
	if i := bytes.IndexByte(buf[:n], '\n'); i >= 0 {
		if s, ok := seqOf(buf[i+1 : n]); ok {
			return off + int64(i) + 1, s, true, nil
		}
	}
	r := bufio.NewReaderSize(io.NewSectionReader(f, off, size-off), 16<<10)
	skipped, err := r.ReadBytes('\n')
	if err != nil {
		return 0, 0, false, nil
	}
	start = off + int64(len(skipped))
	line, err := r.ReadBytes('\n')
	if err != nil {
		return 0, 0, false, nil
	}
	if seq, ok := seqOf(line); ok {
		return start, seq, true, nil
	}
	var e struct {
		Sequence uint64 `json:"seq"`
	}
	if json.Unmarshal(line, &e) != nil {
		return 0, 0, false, fmt.Errorf("task log: unreadable line at offset %d", start)
	}
	return start, e.Sequence, true, nil
}
