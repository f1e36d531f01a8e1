package server

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	pb "stevedore/proto/stevedore/v1"
)

// A long task log is read from any point: the binary search lands before
// the first wanted line whatever the lines' lengths.
func TestReadTaskLogFromAnyPoint(t *testing.T) {
	path := filepath.Join(t.TempDir(), "step.log")
	tl, err := openTaskLog(path)
	if err != nil {
		t.Fatal(err)
	}
	const n = 20000
	var batch []*pb.LogLine
	for i := uint64(1); i <= n; i++ {
		// Lengths vary from a few bytes to 4 KB, so lines straddle the search's probes.
		text := fmt.Sprintf("line %d %s", i, strings.Repeat("x", int(i*7919%4096)))
		batch = append(batch, &pb.LogLine{Sequence: i, Source: pb.LogSource_LOG_SOURCE_STDOUT, Time: timestamppb.New(time.Unix(0, 0)), Text: []byte(text)})
		if len(batch) == 500 {
			if _, err := tl.append(batch); err != nil {
				t.Fatal(err)
			}
			batch = nil
		}
	}
	for _, after := range []uint64{0, 1, 2, 499, 500, 501, 9999, 12345, n - 1, n, n + 5} {
		got, err := readTaskLog(path, after, 3)
		if err != nil {
			t.Fatal(err)
		}
		want := min(3, int(n-min(after, n)))
		if len(got) != want {
			t.Fatalf("after %d: %d lines, want %d", after, len(got), want)
		}
		for i, e := range got {
			if e.Sequence != after+uint64(i)+1 || !strings.HasPrefix(e.Text, fmt.Sprintf("line %d ", e.Sequence)) {
				t.Fatalf("after %d: line %d is %d %.20q", after, i, e.Sequence, e.Text)
			}
		}
	}
	// Reopening finds the last sequence; a repeated batch is not stored twice.
	tl, err = openTaskLog(path)
	if err != nil || tl.last != n {
		t.Fatalf("reopened: last %d, %v", tl.last, err)
	}
	if last, err := tl.append(batch); err != nil || last != n {
		t.Fatalf("a repeated batch: %d, %v", last, err)
	}
}

func BenchmarkReadTaskLogTail(b *testing.B) {
	path := filepath.Join(b.TempDir(), "step.log")
	tl, _ := openTaskLog(path)
	var batch []*pb.LogLine
	for i := uint64(1); i <= 200000; i++ {
		batch = append(batch, &pb.LogLine{Sequence: i, Source: pb.LogSource_LOG_SOURCE_STDOUT, Time: timestamppb.Now(), Text: []byte(fmt.Sprintf("line %d of a long log", i))})
	}
	if _, err := tl.append(batch); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if got, _ := readTaskLog(path, 199990, 100); len(got) != 10 {
			b.Fatal(len(got))
		}
	}
}

// Every level goes through the task log and comes back; a line of a task
// log written before levels existed, or with a level this server does not
// know, reads as the ordinary level.
func TestTaskLogLevels(t *testing.T) {
	path := filepath.Join(t.TempDir(), "step.log")
	tl, err := openTaskLog(path)
	if err != nil {
		t.Fatal(err)
	}
	var lines []*pb.LogLine
	for i, l := range []pb.LogLevel{pb.LogLevel_LOG_LEVEL_UNSPECIFIED, pb.LogLevel_LOG_LEVEL_VERBOSE, pb.LogLevel_LOG_LEVEL_HIGHLIGHT,
		pb.LogLevel_LOG_LEVEL_WAIT, pb.LogLevel_LOG_LEVEL_WARNING, pb.LogLevel_LOG_LEVEL_ERROR} {
		lines = append(lines, &pb.LogLine{Sequence: uint64(i + 1), Source: pb.LogSource_LOG_SOURCE_STDOUT, Time: timestamppb.New(time.Unix(0, 0)), Text: []byte(l.String()), Level: l})
	}
	if _, err := tl.append(lines); err != nil {
		t.Fatal(err)
	}
	got, err := readTaskLog(path, 0, 100)
	if err != nil || len(got) != len(lines) {
		t.Fatalf("%d entries, %v", len(got), err)
	}
	for i, e := range got {
		if e.LogLevel() != lines[i].Level || (e.Level == "") != (lines[i].Level == pb.LogLevel_LOG_LEVEL_UNSPECIFIED) {
			t.Errorf("entry %d: level %q reads as %s, want %s", i, e.Level, e.LogLevel(), lines[i].Level)
		}
	}
	for _, name := range []string{"", "loud"} {
		if l := (LogEntry{Level: name}).LogLevel(); l != pb.LogLevel_LOG_LEVEL_UNSPECIFIED {
			t.Errorf("level %q reads as %s", name, l)
		}
	}
}
