// Package steplog is the record format of a step's output.log: the runner
// (cmd/stevedore-step) appends records while the script runs, and the agent
// reads them while the file grows and again after a restart.
//
// The file is a sequence of length-framed binary records, all integers
// little-endian:
//
//	u32 length of the rest of the record (header below + data)
//	u8  kind (KindStdout, KindStderr, KindEvent)
//	u8  flags (bit 0: Partial; bits 1-3: the Level of a stdout or stderr
//	    record, 0 for LevelDefault; the other bits are 0)
//	u64 sequence
//	i64 time, Unix nanoseconds
//	    data (length-18 bytes, at most MaxData)
//
// Binary framing rather than JSON lines because script output is arbitrary
// bytes (binary, invalid UTF-8, '\r') that must survive byte-exact, and
// because a 200 MB log must be written and read at close to disk speed.
// There is no checksum: the file is only ever appended to, and a record that
// is not complete yet (a torn tail) is recognised by its length alone.
package steplog

import (
	"errors"
	"fmt"
	"time"
)

// Kind says where a record's data came from.
type Kind uint8

// Record kinds.
const (
	// KindStdout is a line of the script's standard output.
	KindStdout Kind = 1
	// KindStderr is a line of the script's standard error, or a message of
	// the runner itself about the script (cancellation, a refused value).
	KindStderr Kind = 2
	// KindEvent is an Event, as JSON, from a service message.
	KindEvent Kind = 3
)

// valid reports whether k is one of the kinds this package knows.
func (k Kind) valid() bool { return k >= KindStdout && k <= KindEvent }

// Level is how a line is meant to be read, as a script sets it with the
// "stdout-verbose" ... "stdout-default" service messages (Octopus's log
// levels). It is independent of the source: a stderr line is a stderr line
// whatever its level.
type Level uint8

// Levels. The numbers are the file format (and equal the wire contract's
// LogLevel), so they never change; LevelDefault, 0, is what every record
// written before levels existed has.
const (
	LevelDefault   Level = 0 // information: an ordinary line
	LevelVerbose   Level = 1 // detail a reader shows only when asked
	LevelHighlight Level = 2 // an important line, to stand out
	LevelWait      Level = 3 // the step waits for something
	LevelWarning   Level = 4
	LevelError     Level = 5
)

// valid reports whether l is one of the levels this package knows.
func (l Level) valid() bool { return l <= LevelError }

// String is the level's lowercase name, as the logs and the API spell it.
func (l Level) String() string {
	switch l {
	case LevelDefault:
		return "default"
	case LevelVerbose:
		return "verbose"
	case LevelHighlight:
		return "highlight"
	case LevelWait:
		return "wait"
	case LevelWarning:
		return "warning"
	case LevelError:
		return "error"
	}
	return fmt.Sprintf("level(%d)", uint8(l))
}

// Record is one entry of output.log.
type Record struct {
	// Seq is assigned by the Writer: firstSeq, firstSeq+1, ... without gaps.
	Seq  uint64
	Kind Kind
	Time time.Time
	// Partial is true when no newline ended this text: a long line cut into
	// pieces (every piece but the last), or output that ended without a
	// newline.
	Partial bool
	// Level is a stdout or stderr record's level; an event's is always
	// LevelDefault.
	Level Level
	// Data is the line's text without its '\n' (stdout/stderr), or the JSON
	// of an Event (KindEvent). It is owned by the caller: the Reader never
	// reuses it. An empty line may have a nil Data.
	Data []byte
}

// Event is the JSON in a KindEvent record, the result of a service message.
// A "mask" event records only that a mask was added, never the value.
type Event struct {
	// Type is "setVariable", "createArtifact", "progress", "failStep",
	// "resultMessage" or "mask".
	Type string `json:"type"`
	Name string `json:"name,omitempty"`
	// Value is a setVariable's value; when Sensitive, SealValue(stepKey, value).
	Value     string `json:"value,omitempty"`
	Sensitive bool   `json:"sensitive,omitempty"`
	// Path is a createArtifact's absolute path.
	Path       string `json:"path,omitempty"`
	Percentage int    `json:"percentage,omitempty"`
	Message    string `json:"message,omitempty"`
}

// MaxData is the longest Data of one record. Longer lines are split into
// several records, all but the last Partial; it bounds the memory of both
// the writer and the reader.
const MaxData = 64 << 10

// ErrCorrupt is returned (wrapped, with the offset) when the bytes at a
// reader's offset cannot be a record: an impossible length, an unknown kind,
// a sequence out of order. Unlike io.EOF, waiting will not fix it.
var ErrCorrupt = errors.New("steplog: corrupt record")

// Framing constants.
const (
	lenSize    = 4                            // the u32 length prefix
	restHeader = 1 + 1 + 8 + 8                // kind, flags, seq, time
	headerSize = lenSize + restHeader         // bytes before the data
	maxRest    = restHeader + MaxData         // the largest valid length
	maxRecord  = lenSize + maxRest            // the largest record on disk
	flagPart   = 1 << 0                       // Partial
	levelShift = 1                            // the Level lives in bits 1-3:
	levelMask  = 0x7 << levelShift            // room for two more levels
	knownFlags = flagPart | levelMask         // any other bit is corruption
	bufferSize = 256 << 10                    // Writer and Reader buffers
	_          = uint(bufferSize - maxRecord) // a buffer holds any record
	_          = uint(1<<32 - 1 - maxRest)    // the length fits in a u32
)
