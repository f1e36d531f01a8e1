package steplog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"
)

// growingFile is an output.log that the writer is still appending to: a
// reader sees only the first n bytes.
type growingFile struct {
	data []byte
	n    int
}

func (g *growingFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	if off >= int64(g.n) {
		return 0, io.EOF
	}
	n := copy(p, g.data[off:g.n])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// readAll reads records until Next fails, checking what every record and
// error must satisfy whatever the bytes.
func readAll(t *testing.T, r *Reader) ([]Record, error) {
	t.Helper()
	var recs []Record
	for {
		before := r.Offset()
		rec, err := r.Next()
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Next: %v, want io.EOF or ErrCorrupt", err)
			}
			if r.Offset() != before {
				t.Fatalf("a failed Next moved the offset from %d to %d", before, r.Offset())
			}
			return recs, err
		}
		if !rec.Kind.valid() || !rec.Level.valid() || (rec.Kind == KindEvent && rec.Level != LevelDefault) || len(rec.Data) > MaxData {
			t.Fatalf("record %+v: kind %d, %d bytes", rec.Seq, rec.Kind, len(rec.Data))
		}
		if got := r.Offset() - before; got != int64(headerSize+len(rec.Data)) {
			t.Fatalf("record of %d bytes advanced the offset by %d", len(rec.Data), got)
		}
		if len(recs) > 0 && rec.Seq != recs[len(recs)-1].Seq+1 {
			t.Fatalf("sequence %d after %d", rec.Seq, recs[len(recs)-1].Seq)
		}
		recs = append(recs, rec)
	}
}

func sameRecords(a, b []Record) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Seq != b[i].Seq || a[i].Kind != b[i].Kind || a[i].Partial != b[i].Partial || a[i].Level != b[i].Level ||
			!a[i].Time.Equal(b[i].Time) || !bytes.Equal(a[i].Data, b[i].Data) {
			return false
		}
	}
	return true
}

// FuzzReader reads arbitrary bytes as output.log: the reader must never
// panic, must return only well-formed records, must stop with io.EOF or
// ErrCorrupt, and must return the same records whether the file was whole
// when read or grew while it was tailed, and when a new reader resumes at a
// record's offset.
func FuzzReader(f *testing.F) {
	var good bytes.Buffer
	w := NewWriter(&good, 1)
	w.Append(KindStdout, false, time.Unix(0, 1), []byte("hello"))
	w.Append(KindStderr, true, time.Unix(0, 2), nil)
	w.Append(KindEvent, false, time.Unix(0, 3), []byte(`{"type":"mask"}`))
	w.Append(KindStdout, false, time.Unix(0, 4), bytes.Repeat([]byte{0, 0xff, '\n'}, 100))
	w.AppendLevel(KindStdout, LevelWarning, false, time.Unix(0, 5), []byte("careful"))
	w.AppendLevel(KindStderr, LevelVerbose, true, time.Unix(0, 6), []byte("detail"))
	w.Flush()
	corrupt := bytes.Clone(good.Bytes())
	corrupt[headerSize+5+4] = 9 // the second record's kind
	eventLevel := bytes.Clone(good.Bytes())
	eventLevel[2*headerSize+5+5] = byte(LevelWarning) << levelShift // the event's flags
	huge := make([]byte, headerSize)
	binary.LittleEndian.PutUint32(huge, 0xffffffff)
	f.Add(good.Bytes(), uint32(10))
	f.Add(good.Bytes()[:len(good.Bytes())-3], uint32(headerSize))
	f.Add(corrupt, uint32(0))
	f.Add(eventLevel, uint32(headerSize+5))
	f.Add(huge, uint32(1))
	f.Add([]byte{}, uint32(0))
	f.Add(make([]byte, 64), uint32(7))
	f.Fuzz(func(t *testing.T, data []byte, cut uint32) {
		whole, wholeErr := readAll(t, NewReader(bytes.NewReader(data), 0))

		// Tail the file as it grows: first cut bytes, then all of them.
		g := &growingFile{data: data, n: int(cut % uint32(len(data)+1))}
		r := NewReader(g, 0)
		first, _ := readAll(t, r)
		g.n = len(data)
		rest, tailErr := readAll(t, r)
		tailed := append(first, rest...)
		if !sameRecords(whole, tailed) {
			t.Fatalf("read whole: %d records; tailed from %d bytes: %d records", len(whole), cut, len(tailed))
		}
		if errors.Is(wholeErr, ErrCorrupt) != errors.Is(tailErr, ErrCorrupt) {
			t.Fatalf("read whole: %v; tailed: %v", wholeErr, tailErr)
		}

		// Resume at the offset of each record.
		off := int64(0)
		for i := range whole {
			resumed, _ := readAll(t, NewReader(bytes.NewReader(data), off))
			if !sameRecords(whole[i:], resumed) {
				t.Fatalf("resumed at record %d (offset %d): %d records, want %d", i, off, len(resumed), len(whole)-i)
			}
			off += int64(headerSize + len(whole[i].Data))
			if i >= 8 { // enough to show it; bounded work per input
				break
			}
		}
	})
}

// FuzzWriteRead writes arbitrary lines and reads them back: long lines come
// back as Partial pieces that join to the original bytes, each piece with
// its line's level.
func FuzzWriteRead(f *testing.F) {
	f.Add([]byte("a\nb\n\nc"), uint16(3), byte(0))
	f.Add([]byte{0, 0xc3, '\n', 0xff}, uint16(30000), byte(3))
	f.Add([]byte{}, uint16(0), byte(1))
	f.Fuzz(func(t *testing.T, data []byte, long uint16, kinds byte) {
		// long makes the last line up to three times MaxData from a small input.
		lines := bytes.Split(data, []byte("\n"))
		last := len(lines) - 1
		lines[last] = append(lines[last], bytes.Repeat([]byte{kinds}, 3*int(long))...)
		want := bytes.Join(lines, []byte("\n"))
		var buf bytes.Buffer
		w := NewWriter(&buf, 7)
		levelOf := func(line int) Level { return Level((int(kinds)/2 + line) % int(LevelError+1)) }
		for i, l := range lines {
			kind := Kind(1 + (int(kinds)+i)%2)
			if _, err := w.AppendLevel(kind, levelOf(i), i == last, time.Unix(0, int64(i)), l); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		recs, err := readAll(t, NewReader(bytes.NewReader(buf.Bytes()), 0))
		if !errors.Is(err, io.EOF) {
			t.Fatalf("reading what the writer wrote: %v", err)
		}
		if len(recs) == 0 || recs[0].Seq != 7 || recs[len(recs)-1].Seq != w.LastSeq() {
			t.Fatalf("%d records, the writer's last sequence %d", len(recs), w.LastSeq())
		}
		var joined []byte
		line := 0
		for _, r := range recs {
			if r.Level != levelOf(line) {
				t.Fatalf("record %d of line %d: level %s, wrote %s", r.Seq, line, r.Level, levelOf(line))
			}
			joined = append(joined, r.Data...)
			if !r.Partial {
				joined = append(joined, '\n')
				line++
			}
		}
		if !recs[len(recs)-1].Partial {
			t.Fatal("the last line, written partial, came back whole")
		}
		if !bytes.Equal(joined, want) {
			t.Fatalf("joined %d bytes, wrote %d", len(joined), len(want))
		}
	})
}
