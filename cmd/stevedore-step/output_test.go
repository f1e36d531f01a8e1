package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"stevedore/internal/steplog"
)

// rec is a record as a test expects it.
type rec struct {
	kind    steplog.Kind
	partial bool
	data    string
}

// feedOutput passes stdout (and stderr after it) through an output in chunks
// of the given size and returns the records written.
func feedOutput(t *testing.T, o *output, buf *bytes.Buffer, chunk int, stdout, stderr string) []rec {
	t.Helper()
	for _, in := range []struct {
		kind steplog.Kind
		data string
	}{{steplog.KindStdout, stdout}, {steplog.KindStderr, stderr}} {
		s := &stream{o: o, kind: in.kind}
		data := []byte(in.data)
		for len(data) > 0 {
			n := min(chunk, len(data))
			s.chunk(data[:n])
			data = data[n:]
		}
		s.close()
	}
	r := steplog.NewReader(bytes.NewReader(buf.Bytes()), 0)
	var got []rec
	for {
		record, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, rec{record.Kind, record.Partial, string(record.Data)})
	}
	if r.Offset() != int64(buf.Len()) {
		t.Fatalf("%d bytes after the last record", int64(buf.Len())-r.Offset())
	}
	return got
}

func TestStreamLines(t *testing.T) {
	max := steplog.MaxData
	long := strings.Repeat("L", 2*max+10)
	exact := strings.Repeat("E", max)
	setVar := "##stevedore[setVariable name='" + b64("A") + "' value='" + b64("b") + "']"
	bigSecret := strings.Repeat("S", 40<<10) // its service line is longer than MaxData, its event is not
	bigSet := "##stevedore[setVariable name='" + b64("Cert") + "' value='" + b64(bigSecret) + "' sensitive='VHJ1ZQ==']"
	hugeSecret := strings.Repeat("H", 200<<10) // its event would be longer than MaxData
	hugeSet := "##stevedore[setVariable name='" + b64("Huge") + "' value='" + b64(hugeSecret) + "' sensitive='VHJ1ZQ==']"
	tests := []struct {
		name   string
		stdout string
		stderr string
		want   []rec
	}{
		{"lines", "a\nb\n", "e\n", []rec{{1, false, "a"}, {1, false, "b"}, {2, false, "e"}}},
		{"empty lines and CR kept", "\n\r\nx\r\n", "", []rec{{1, false, ""}, {1, false, "\r"}, {1, false, "x\r"}}},
		{"no trailing newline", "a\nb", "c", []rec{{1, false, "a"}, {1, true, "b"}, {2, true, "c"}}},
		{"binary and invalid UTF-8", "\x00\xff\xfe\x01\n", "", []rec{{1, false, "\x00\xff\xfe\x01"}}},
		{"exactly MaxData", exact + "\nz\n", "", []rec{{1, false, exact}, {1, false, "z"}}},
		{"exactly MaxData at the end", exact, "", []rec{{1, true, exact}}},
		{"long line in pieces", long + "\n", "", []rec{{1, true, long[:max]}, {1, true, long[max : 2*max]}, {1, false, long[2*max:]}}},
		{"service message", "a\n" + setVar + "\nb\n", "", []rec{{1, false, "a"}, {3, false, `{"type":"setVariable","name":"A","value":"b"}`}, {1, false, "b"}}},
		{"service message at the end without newline", setVar, "", []rec{{3, false, `{"type":"setVariable","name":"A","value":"b"}`}}},
		{"service message after text", "progress..." + setVar + "\n", "", []rec{{1, true, "progress..."}, {3, false, `{"type":"setVariable","name":"A","value":"b"}`}}},
		{"service message on stderr is a line", "", setVar + "\n", []rec{{2, false, setVar}}},
		{"service message inside a long line is text", long + setVar + "\n", "", []rec{{1, true, long[:max]}, {1, true, long[max : 2*max]}, {1, false, long[2*max:] + setVar}}},
		{"malformed service message kept", "##stevedore[setVariable name='!!!']\n", "", []rec{{1, false, "##stevedore[setVariable name='!!!']"}}},
		{"long sensitive service line is not cut", bigSet + "\nafter " + bigSecret + "\n", "", []rec{{3, false, ""}, {1, false, "after " + maskText}}},
		{"too large an event is refused", hugeSet + "\nnext\n", "", []rec{
			{2, false, fmt.Sprintf("stevedore-step: the setVariable event \"Huge\" was not recorded: %d bytes, at most %d", sealedEventLen("Huge", len(hugeSecret)), steplog.MaxData)},
			{1, false, "next"}}},
	}
	for _, tt := range tests {
		for _, chunk := range []int{1, 7, 4096, readSize} {
			if chunk == 1 && len(tt.stdout) > 1<<16 {
				continue // slow, and no different from 7
			}
			var buf bytes.Buffer
			o := newOutput(&buf, 1, 0)
			o.stepKey = bytes.Repeat([]byte{7}, 32)
			o.workDir = "/work"
			got := feedOutput(t, o, &buf, chunk, tt.stdout, tt.stderr)
			// A sealed value differs each time: compare the event's kind only.
			if tt.name == "long sensitive service line is not cut" && len(got) == 2 && got[0].kind == steplog.KindEvent {
				var ev steplog.Event
				if err := json.Unmarshal([]byte(got[0].data), &ev); err != nil {
					t.Fatal(err)
				}
				if v, err := steplog.OpenValue(o.stepKey, ev.Value); err != nil || v != bigSecret {
					t.Fatalf("%s: sealed value does not open: %v", tt.name, err)
				}
				got[0].data = ""
			}
			if len(got) != len(tt.want) {
				t.Fatalf("%s, chunk %d: %d records %s, want %d", tt.name, chunk, len(got), short(got), len(tt.want))
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("%s, chunk %d: record %d = %s, want %s", tt.name, chunk, i, short(got[i:i+1]), short(tt.want[i:i+1]))
				}
			}
		}
	}
}

func short(rs []rec) string {
	var b strings.Builder
	for _, r := range rs {
		d := r.data
		if len(d) > 40 {
			d = d[:40] + "..."
		}
		b.WriteString("{" + string('0'+rune(r.kind)) + " ")
		if r.partial {
			b.WriteString("partial ")
		}
		b.WriteString(strings.ReplaceAll(d, "\n", `\n`) + "}")
	}
	return b.String()
}

func TestMasking(t *testing.T) {
	tests := []struct {
		name    string
		secrets []string
		stdout  string
		want    []string // stdout records, then events as JSON
	}{
		{"simple", []string{"hunter2"}, "pw=hunter2 again hunter2\n", []string{"pw=******** again ********"}},
		{"longest first", []string{"abc", "abcdef"}, "abcdef abc\n", []string{"******** ********"}},
		{"each line of a multi-line value", []string{"line one\nline two\n"}, "line one\nx line two x\n", []string{"********", "x ******** x"}},
		{"empty value masks nothing", []string{""}, "text\n", []string{"text"}},
		{"mask added by a service message", nil,
			"before s3cr3t\n##stevedore[mask value='" + b64("s3cr3t") + "']\nafter s3cr3t\n",
			[]string{"before s3cr3t", `{"type":"mask"}`, "after ********"}},
		{"failStep message masked", []string{"hunter2"},
			"##stevedore[failStep message='" + b64("bad hunter2") + "']\n",
			[]string{`{"type":"failStep","message":"bad ********"}`}},
		{"plain output variable holding a secret is masked without a key", []string{"hunter2"},
			"##stevedore[setVariable name='" + b64("Conn") + "' value='" + b64("pw=hunter2") + "']\n",
			[]string{`stevedore-step: output variable "Conn" holds a sensitive value: it was masked`, `{"type":"setVariable","name":"Conn","value":"pw=********"}`}},
		{"sensitive output variable without a key is not recorded", nil,
			"##stevedore[setVariable name='" + b64("S") + "' value='" + b64("v4lue") + "' sensitive='VHJ1ZQ==']\nv4lue\n",
			[]string{`stevedore-step: sensitive output variable "S" was not recorded: the runner was given no step key`, "********"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			o := newOutput(&buf, 1, 0)
			for _, s := range tt.secrets {
				o.masks.add(s)
			}
			got := feedOutput(t, o, &buf, 5, tt.stdout, "")
			var data []string
			for _, r := range got {
				data = append(data, r.data)
			}
			if strings.Join(data, "|") != strings.Join(tt.want, "|") {
				t.Fatalf("records %q, want %q", data, tt.want)
			}
		})
	}
}

// TestPumpStdoutFirst: a mask written to stdout before a secret is written to
// stderr always masks it, whatever the timing.
func TestPumpStdoutFirst(t *testing.T) {
	for i := range 50 {
		path := t.TempDir() + "/output.log"
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		o := newOutput(f, 1, 0)
		outR, outW, err := newPipe()
		if err != nil {
			t.Fatal(err)
		}
		errR, errW, err := newPipe()
		if err != nil {
			t.Fatal(err)
		}
		p, err := newPump(o, outR, errR)
		if err != nil {
			t.Fatal(err)
		}
		go p.run()
		secret := fmt.Sprintf("secret-%d", i)
		outW.WriteString("before\n##stevedore[mask value='" + b64(secret) + "']\n")
		errW.WriteString("leak? " + secret + "\n")
		outW.Close()
		errW.Close()
		<-p.done
		if err := o.finish(f); err != nil {
			t.Fatal(err)
		}
		f.Close()
		recs, raw := readLog(t, filepath.Dir(path))
		if len(recs) != 3 || string(recs[2].Data) != "leak? "+maskText {
			t.Fatalf("round %d: records %s", i, dump(recs))
		}
		if bytes.Contains(raw, []byte(secret)) {
			t.Fatalf("round %d: the secret reached the log", i)
		}
	}
}

// sealedEventLen is the length of the JSON of a sensitive setVariable event
// whose value has n bytes.
func sealedEventLen(name string, n int) int {
	sealed := strings.Repeat("A", base64.StdEncoding.EncodedLen(12+n+16)) // nonce, value, GCM tag
	b, _ := json.Marshal(steplog.Event{Type: evSetVariable, Name: name, Value: sealed, Sensitive: true})
	return len(b)
}

// The log limit keeps the script's output up to the limit, says where it
// cut, keeps service messages working past it, and counts what it dropped.
func TestLogLimit(t *testing.T) {
	setVar := "##stevedore[setVariable name='" + b64("A") + "' value='" + b64("b") + "']"
	cutLine := "stevedore-step: the step's output reached its log limit of 10B: what it writes from here on is counted, not kept; service messages still work"
	progress := "##stevedore[progress percentage='" + b64("50") + "' message='" + b64("half") + "']"
	progressEvent, _ := json.Marshal(steplog.Event{Type: "progress", Percentage: 50, Message: "half"})
	tests := []struct {
		name           string
		limit          int64
		stdout, stderr string
		want           []rec
		wantEnd        string // the runner's closing count, if any
	}{
		{"no limit", 0, "aaaaa\nbbbbb\nccccc\n", "", []rec{{1, false, "aaaaa"}, {1, false, "bbbbb"}, {1, false, "ccccc"}}, ""},
		{"within it", 10, "aaaaa\nbbbbb\n", "", []rec{{1, false, "aaaaa"}, {1, false, "bbbbb"}}, ""},
		{"past it", 10, "aaaaa\nbbbbb\nccc\n", "dd\n", []rec{{1, false, "aaaaa"}, {1, false, "bbbbb"}, {2, false, cutLine}},
			"stevedore-step: 5 bytes of output in 2 records were not kept: the log limit is 10B"},
		{"a line that does not fit is not kept in part", 10, "aaaaa\nbbbbbbbbbb\nc\n", "", []rec{{1, false, "aaaaa"}, {2, false, cutLine}},
			"stevedore-step: 11 bytes of output in 2 records were not kept: the log limit is 10B"},
		{"service messages still work past it", 10, "aaaaaaaaaaa\n" + setVar + "\n", "", []rec{{2, false, cutLine}, {3, false, `{"type":"setVariable","name":"A","value":"b"}`}},
			"stevedore-step: 11 bytes of output in 1 records were not kept: the log limit is 10B"},
		{"progress past it is counted, not kept", 10, "aaaaaaaaaaa\n" + progress + "\n", "", []rec{{2, false, cutLine}},
			fmt.Sprintf("stevedore-step: %d bytes of output in 2 records were not kept: the log limit is 10B", 11+len(progressEvent))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			o := newOutput(&buf, 1, tt.limit)
			got := feedOutput(t, o, &buf, 3, tt.stdout, tt.stderr)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("records %s\nwant    %s", short(got), short(tt.want))
			}
			f, err := os.CreateTemp(t.TempDir(), "log")
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			o.w = steplog.NewWriter(f, 100)
			if err := o.finish(f); err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(f.Name())
			r := steplog.NewReader(bytes.NewReader(b), 0)
			end, err := r.Next()
			switch {
			case tt.wantEnd == "" && err != io.EOF:
				t.Errorf("a closing line without a cut: %q (%v)", end.Data, err)
			case tt.wantEnd != "" && (err != nil || string(end.Data) != tt.wantEnd):
				t.Errorf("closing line %q (%v), want %q", end.Data, err, tt.wantEnd)
			}
		})
	}
}
