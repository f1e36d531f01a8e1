package main

import (
	"bytes"
	"testing"

	"stevedore/internal/steplog"
)

// FuzzStream passes arbitrary script output through the runner's line
// cutter and service-message handling in chunks of arbitrary size. It must
// not panic; records must be at most MaxData; and output that holds no
// service message must reassemble byte for byte from its records, Partial
// pieces joined back together.
func FuzzStream(f *testing.F) {
	f.Add([]byte("a\nb\n\nc"), uint16(1))
	f.Add([]byte("\x00\xff\xfe\r\n\xc3"), uint16(3))
	f.Add(bytes.Repeat([]byte("x"), steplog.MaxData+5), uint16(4096))
	f.Add([]byte("text##stevedore[setVariable name='QQ==' value='Yg==']\n##octopus[mask value='Yg==']\nb b\n"), uint16(2))
	f.Add([]byte("##stevedore[createArtifact path='Li4vZXRj']"), uint16(5))
	f.Fuzz(func(t *testing.T, data []byte, chunk uint16) {
		var buf bytes.Buffer
		o := newOutput(&buf, 1, 0)
		o.stepKey = bytes.Repeat([]byte{7}, 32)
		o.workDir = "/work"
		got := feedOutput(t, o, &buf, int(chunk%8192)+1, string(data), "")
		var joined []byte
		events := 0
		for _, r := range got {
			if len(r.data) > steplog.MaxData {
				t.Fatalf("a record of %d bytes", len(r.data))
			}
			switch r.kind {
			case steplog.KindStdout:
				joined = append(joined, r.data...)
				if !r.partial {
					joined = append(joined, '\n')
				}
			case steplog.KindEvent:
				events++
			}
		}
		if indexServicePrefix(data) >= 0 {
			return // a service message became an event: there is no byte-exact text to compare
		}
		if events > 0 {
			t.Fatalf("%d events from output without a service message", events)
		}
		if !bytes.Equal(joined, data) {
			t.Fatalf("records %s join to %d bytes, want the %d written", short(got), len(joined), len(data))
		}
	})
}
