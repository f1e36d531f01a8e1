package steplog

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type input struct {
	kind    Kind
	partial bool
	data    []byte
}

// want is a record as the reader should return it (Seq and Time aside).
type want struct {
	kind    Kind
	partial bool
	data    []byte
}

func TestRoundTrip(t *testing.T) {
	big := bytes.Repeat([]byte("x"), MaxData)
	bigPlus := append(bytes.Repeat([]byte("y"), MaxData), 'z')
	huge := bytes.Repeat([]byte("0123456789"), (3*MaxData)/10+7) // three full pieces and a rest
	binaryData := make([]byte, 256)
	for i := range binaryData {
		binaryData[i] = byte(i)
	}
	tests := []struct {
		name     string
		firstSeq uint64
		in       []input
		want     []want
	}{
		{"text", 1, []input{{KindStdout, false, []byte("hello")}}, []want{{KindStdout, false, []byte("hello")}}},
		{"empty line", 7, []input{{KindStdout, false, nil}, {KindStderr, false, []byte{}}},
			[]want{{KindStdout, false, nil}, {KindStderr, false, nil}}},
		{"binary", 1, []input{{KindStdout, false, binaryData}}, []want{{KindStdout, false, binaryData}}},
		{"invalid utf-8 and cr", 1, []input{{KindStderr, true, []byte("\xff\xfe bad \xc3\x28\r")}},
			[]want{{KindStderr, true, []byte("\xff\xfe bad \xc3\x28\r")}}},
		{"event", 100, []input{{KindEvent, false, []byte(`{"type":"mask"}`)}},
			[]want{{KindEvent, false, []byte(`{"type":"mask"}`)}}},
		{"exactly MaxData", 1, []input{{KindStdout, false, big}}, []want{{KindStdout, false, big}}},
		{"MaxData+1 splits", 1, []input{{KindStdout, false, bigPlus}},
			[]want{{KindStdout, true, bigPlus[:MaxData]}, {KindStdout, false, bigPlus[MaxData:]}}},
		{"split keeps caller's partial", 1, []input{{KindStderr, true, bigPlus}},
			[]want{{KindStderr, true, bigPlus[:MaxData]}, {KindStderr, true, bigPlus[MaxData:]}}},
		{"many pieces", 1, []input{{KindStdout, false, huge}}, []want{
			{KindStdout, true, huge[:MaxData]},
			{KindStdout, true, huge[MaxData : 2*MaxData]},
			{KindStdout, true, huge[2*MaxData : 3*MaxData]},
			{KindStdout, false, huge[3*MaxData:]},
		}},
		{"first seq 0 is 1", 0, []input{{KindStdout, false, []byte("a")}}, []want{{KindStdout, false, []byte("a")}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			w := NewWriter(&buf, tt.firstSeq)
			first := max(tt.firstSeq, 1)
			if got := w.LastSeq(); got != first-1 {
				t.Fatalf("LastSeq before writing = %d, want %d", got, first-1)
			}
			base := time.Unix(1_700_000_000, 123456789)
			for i, in := range tt.in {
				if _, err := w.Append(in.kind, in.partial, base.Add(time.Duration(i)), in.data); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			wantLast := first + uint64(len(tt.want)) - 1
			if got := w.LastSeq(); got != wantLast {
				t.Fatalf("LastSeq = %d, want %d", got, wantLast)
			}
			r := NewReader(bytes.NewReader(buf.Bytes()), 0)
			for i, wt := range tt.want {
				rec, err := r.Next()
				if err != nil {
					t.Fatalf("record %d: %v", i, err)
				}
				if rec.Seq != first+uint64(i) || rec.Kind != wt.kind || rec.Partial != wt.partial || !bytes.Equal(rec.Data, wt.data) {
					t.Fatalf("record %d = {seq %d kind %d partial %v len %d}, want {seq %d kind %d partial %v len %d}",
						i, rec.Seq, rec.Kind, rec.Partial, len(rec.Data), first+uint64(i), wt.kind, wt.partial, len(wt.data))
				}
				if rec.Time.UnixNano() < base.UnixNano() {
					t.Fatalf("record %d: time %v before %v", i, rec.Time, base)
				}
			}
			if _, err := r.Next(); err != io.EOF {
				t.Fatalf("after the last record: %v, want io.EOF", err)
			}
			if r.Offset() != int64(buf.Len()) {
				t.Fatalf("Offset = %d, want %d", r.Offset(), buf.Len())
			}
		})
	}
}

// TestLevelRoundTrip: every level comes back on stdout and stderr records,
// with Partial and on every piece of a long line, and beside records
// written by Append (LevelDefault), as an old runner writes them.
func TestLevelRoundTrip(t *testing.T) {
	type in struct {
		kind    Kind
		level   Level
		partial bool
		data    []byte
	}
	long := bytes.Repeat([]byte("w"), MaxData+10)
	var ins []in
	for _, l := range []Level{LevelDefault, LevelVerbose, LevelHighlight, LevelWait, LevelWarning, LevelError} {
		ins = append(ins, in{KindStdout, l, false, []byte(l.String())}, in{KindStderr, l, true, []byte("e " + l.String())})
	}
	ins = append(ins, in{KindStdout, LevelWarning, false, long}, in{KindEvent, LevelDefault, false, []byte(`{"type":"mask"}`)})
	var buf bytes.Buffer
	w := NewWriter(&buf, 1)
	for _, x := range ins {
		if _, err := w.AppendLevel(x.kind, x.level, x.partial, time.Unix(1, 0), x.data); err != nil {
			t.Fatal(err)
		}
	}
	w.Append(KindStdout, false, time.Unix(2, 0), []byte("plain"))
	w.Flush()
	recs, err := readAll(t, NewReader(bytes.NewReader(buf.Bytes()), 0))
	if !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	var want []Record
	for _, x := range ins {
		if len(x.data) > MaxData {
			want = append(want, Record{Kind: x.kind, Level: x.level, Partial: true, Data: x.data[:MaxData]})
			x.data = x.data[MaxData:]
		}
		want = append(want, Record{Kind: x.kind, Level: x.level, Partial: x.partial, Data: x.data})
	}
	want = append(want, Record{Kind: KindStdout, Data: []byte("plain")})
	if len(recs) != len(want) {
		t.Fatalf("%d records, want %d", len(recs), len(want))
	}
	for i, r := range recs {
		if r.Kind != want[i].Kind || r.Level != want[i].Level || r.Partial != want[i].Partial || !bytes.Equal(r.Data, want[i].Data) {
			t.Errorf("record %d: kind %d level %s partial %v %q; want kind %d level %s partial %v", i, r.Kind, r.Level, r.Partial, r.Data[:min(len(r.Data), 20)], want[i].Kind, want[i].Level, want[i].Partial)
		}
	}
}

func TestAppendLevelRefused(t *testing.T) {
	tests := []struct {
		name  string
		kind  Kind
		level Level
	}{
		{"unknown level", KindStdout, LevelError + 1},
		{"largest level bits", KindStderr, 7},
		{"event with a level", KindEvent, LevelWarning},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			w := NewWriter(&buf, 1)
			if _, err := w.AppendLevel(tt.kind, tt.level, false, time.Now(), []byte("x")); err == nil {
				t.Fatal("no error")
			}
			// A refused record writes nothing and breaks nothing.
			if _, err := w.Append(KindStdout, false, time.Now(), []byte("y")); err != nil || w.LastSeq() != 1 {
				t.Fatalf("after a refused record: %v, last sequence %d", err, w.LastSeq())
			}
		})
	}
}

func TestTimeRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf, 1)
	now := time.Now()
	if _, err := w.Append(KindStdout, false, now, []byte("x")); err != nil {
		t.Fatal(err)
	}
	w.Flush()
	rec, err := NewReader(bytes.NewReader(buf.Bytes()), 0).Next()
	if err != nil {
		t.Fatal(err)
	}
	if !rec.Time.Equal(now) {
		t.Fatalf("time %v, want %v", rec.Time, now)
	}
}

func TestDataNotReused(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf, 1)
	for _, s := range []string{"first", "second"} {
		w.Append(KindStdout, false, time.Now(), []byte(s))
	}
	w.Flush()
	r := NewReader(bytes.NewReader(buf.Bytes()), 0)
	a, _ := r.Next()
	b, _ := r.Next()
	if string(a.Data) != "first" || string(b.Data) != "second" {
		t.Fatalf("got %q %q", a.Data, b.Data)
	}
}

// TestTornTail cuts a file at every length: a reader sees io.EOF at a torn
// record and the record itself once the rest is there.
func TestTornTail(t *testing.T) {
	var full bytes.Buffer
	w := NewWriter(&full, 10)
	w.Append(KindStdout, false, time.Now(), []byte("complete"))
	w.Append(KindStderr, false, time.Now(), bytes.Repeat([]byte("t"), 1000))
	w.Flush()
	firstLen := headerSize + len("complete")
	for cut := 0; cut <= full.Len(); cut++ {
		path := filepath.Join(t.TempDir(), "output.log")
		if err := os.WriteFile(path, full.Bytes()[:cut], 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		r := NewReader(f, 0)
		got := 0
		for {
			_, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("cut %d: %v", cut, err)
			}
			got++
		}
		wantRecords := 0
		if cut >= firstLen {
			wantRecords = 1
		}
		if cut == full.Len() {
			wantRecords = 2
		}
		if got != wantRecords {
			t.Fatalf("cut %d: %d records, want %d", cut, got, wantRecords)
		}
		// The writer finishes the file; the same reader goes on.
		af, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		af.Write(full.Bytes()[cut:])
		af.Close()
		for got < 2 {
			rec, err := r.Next()
			if err != nil {
				t.Fatalf("cut %d, after the rest: %v", cut, err)
			}
			if rec.Seq != 10+uint64(got) {
				t.Fatalf("cut %d: seq %d", cut, rec.Seq)
			}
			got++
		}
		if _, err := r.Next(); err != io.EOF {
			t.Fatalf("cut %d: at the end: %v", cut, err)
		}
		f.Close()
	}
}

// TestTailWhileWriting reads a file while another goroutine writes it.
func TestTailWhileWriting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "output.log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const n = 20000
	go func() {
		w := NewWriter(f, 1)
		for i := range n {
			w.Append(KindStdout, false, time.Now(), fmt.Appendf(nil, "line %d %s", i, strings.Repeat("p", i%300)))
			if i%97 == 0 {
				w.Flush()
			}
		}
		w.Flush()
	}()
	rf, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer rf.Close()
	r := NewReader(rf, 0)
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; i < n; {
		rec, err := r.Next()
		if err == io.EOF {
			if time.Now().After(deadline) {
				t.Fatalf("stuck at record %d", i)
			}
			time.Sleep(time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("line %d %s", i, strings.Repeat("p", i%300)); string(rec.Data) != want {
			t.Fatalf("record %d = %q", i, rec.Data)
		}
		i++
	}
}

func TestResumeAtOffset(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf, 5)
	for _, s := range []string{"a", "b", "c"} {
		w.Append(KindStdout, false, time.Now(), []byte(s))
	}
	w.Flush()
	r := NewReader(bytes.NewReader(buf.Bytes()), 0)
	r.Next()
	r2 := NewReader(bytes.NewReader(buf.Bytes()), r.Offset())
	rec, err := r2.Next()
	if err != nil || rec.Seq != 6 || string(rec.Data) != "b" {
		t.Fatalf("resumed: %+v, %v", rec, err)
	}
}

func TestCorrupt(t *testing.T) {
	var good bytes.Buffer
	w := NewWriter(&good, 1)
	w.Append(KindStdout, false, time.Now(), []byte("ok"))
	w.Append(KindStdout, false, time.Now(), []byte("ok"))
	w.Flush()
	recLen := headerSize + 2
	header := func(length uint32, kind, flags byte, seq uint64) []byte {
		b := make([]byte, headerSize)
		binary.LittleEndian.PutUint32(b, length)
		b[4], b[5] = kind, flags
		binary.LittleEndian.PutUint64(b[6:], seq)
		return b
	}
	tests := []struct {
		name   string
		file   []byte
		atRec  int   // records read fine before the corruption
		offset int64 // the offset the error names
	}{
		{"zero length", header(0, 1, 0, 1), 0, 0},
		{"length below header", header(restHeader-1, 1, 0, 1), 0, 0},
		{"length above maximum", header(maxRest+1, 1, 0, 1), 0, 0},
		{"huge length", header(0xffffffff, 1, 0, 1), 0, 0},
		{"zero kind", header(restHeader, 0, 0, 1), 0, 0},
		{"unknown kind", header(restHeader, 9, 0, 1), 0, 0},
		{"unknown flag", header(restHeader, 1, 0x80, 1), 0, 0},
		{"unknown level", header(restHeader, 1, 6<<levelShift, 1), 0, 0},
		{"highest level bits", header(restHeader, 2, levelMask|flagPart, 1), 0, 0},
		{"event with a level", header(restHeader, 3, byte(LevelWarning)<<levelShift, 1), 0, 0},
		{"zeros after a record", append(bytes.Clone(good.Bytes()[:recLen]), make([]byte, 64)...), 1, int64(recLen)},
		{"sequence gap", append(bytes.Clone(good.Bytes()[:recLen]), header(restHeader, 1, 0, 3)...), 1, int64(recLen)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewReader(bytes.NewReader(tt.file), 0)
			for i := range tt.atRec {
				if _, err := r.Next(); err != nil {
					t.Fatalf("record %d: %v", i, err)
				}
			}
			_, err := r.Next()
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("err = %v, want ErrCorrupt", err)
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("offset %d", tt.offset)) {
				t.Fatalf("err = %v, want it to name offset %d", err, tt.offset)
			}
			if r.Offset() != tt.offset {
				t.Fatalf("Offset = %d, want %d", r.Offset(), tt.offset)
			}
		})
	}
}

type failingWriter struct{ after int }

func (f *failingWriter) Write(p []byte) (int, error) {
	if f.after <= 0 {
		return 0, errors.New("disk full")
	}
	f.after--
	return len(p), nil
}

func TestWriterErrorIsSticky(t *testing.T) {
	w := NewWriter(&failingWriter{}, 1)
	w.Append(KindStdout, false, time.Now(), []byte("x"))
	if err := w.Flush(); err == nil {
		t.Fatal("Flush: no error")
	}
	if _, err := w.Append(KindStdout, false, time.Now(), []byte("y")); err == nil {
		t.Fatal("Append after a failure: no error")
	}
	if _, err := NewWriter(io.Discard, 1).Append(Kind(0), false, time.Now(), nil); err == nil {
		t.Fatal("Append of kind 0: no error")
	}
}

func TestSealOpen(t *testing.T) {
	key := make([]byte, 32)
	rand.Read(key)
	other := make([]byte, 32)
	rand.Read(other)
	tests := []struct {
		name      string
		plaintext string
	}{
		{"empty", ""},
		{"text", "p@ssw0rd"},
		{"unicode", "päss – wörd 🔑"},
		{"long", strings.Repeat("secret", 10000)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sealed, err := SealValue(key, tt.plaintext)
			if err != nil {
				t.Fatal(err)
			}
			if tt.plaintext != "" && strings.Contains(sealed, tt.plaintext) {
				t.Fatal("sealed value holds the plaintext")
			}
			again, _ := SealValue(key, tt.plaintext)
			if again == sealed {
				t.Fatal("two seals of the same value are equal: nonce not random")
			}
			got, err := OpenValue(key, sealed)
			if err != nil || got != tt.plaintext {
				t.Fatalf("OpenValue = %q, %v", got, err)
			}
			if _, err := OpenValue(other, sealed); err == nil {
				t.Fatal("OpenValue with the wrong key succeeded")
			}
			tampered := []byte(sealed)
			tampered[len(tampered)/2] ^= 1
			if _, err := OpenValue(key, string(tampered)); err == nil {
				t.Fatal("OpenValue of a tampered value succeeded")
			}
		})
	}
	for _, bad := range [][]byte{nil, make([]byte, 16), make([]byte, 33)} {
		if _, err := SealValue(bad, "x"); !errors.Is(err, errKeySize) {
			t.Fatalf("SealValue with a %d-byte key: %v", len(bad), err)
		}
	}
	for _, bad := range []string{"", "!!!", "AAAA"} {
		if _, err := OpenValue(key, bad); err == nil {
			t.Fatalf("OpenValue(%q) succeeded", bad)
		}
	}
}

// benchLines is a log of typical lines (about 100 bytes) and some long ones.
func benchLines() [][]byte {
	lines := make([][]byte, 1000)
	for i := range lines {
		n := 60 + i%80
		if i%250 == 0 {
			n = 8 << 10
		}
		lines[i] = bytes.Repeat([]byte{'a' + byte(i%26)}, n)
	}
	return lines
}

func BenchmarkWrite(b *testing.B) {
	lines := benchLines()
	total := 0
	for _, l := range lines {
		total += len(l)
	}
	b.SetBytes(int64(total))
	b.ReportAllocs()
	w := NewWriter(io.Discard, 1)
	now := time.Now()
	for b.Loop() {
		for _, l := range lines {
			if _, err := w.Append(KindStdout, false, now, l); err != nil {
				b.Fatal(err)
			}
		}
		w.Flush()
	}
}

func BenchmarkRead(b *testing.B) {
	lines := benchLines()
	var buf bytes.Buffer
	w := NewWriter(&buf, 1)
	total := 0
	for range 20 {
		for _, l := range lines {
			w.Append(KindStdout, false, time.Now(), l)
			total += len(l)
		}
	}
	w.Flush()
	path := filepath.Join(b.TempDir(), "output.log")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		b.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	b.SetBytes(int64(total))
	b.ReportAllocs()
	for b.Loop() {
		r := NewReader(f, 0)
		for {
			_, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
		}
	}
}

// The fuzz seed that sets a level on an event is refused at that event.
func TestEventWithLevelSeed(t *testing.T) {
	var good bytes.Buffer
	w := NewWriter(&good, 1)
	w.Append(KindStdout, false, time.Unix(0, 1), []byte("hello"))
	w.Append(KindStderr, true, time.Unix(0, 2), nil)
	w.Append(KindEvent, false, time.Unix(0, 3), []byte(`{"type":"mask"}`))
	w.Flush()
	b := good.Bytes()
	if Kind(b[2*headerSize+5+4]) != KindEvent {
		t.Fatal("the third record is not where the seed expects")
	}
	b[2*headerSize+5+5] = byte(LevelWarning) << levelShift
	r := NewReader(bytes.NewReader(b), 0)
	r.Next()
	r.Next()
	if _, err := r.Next(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("an event with a level: %v, want ErrCorrupt", err)
	}
}
