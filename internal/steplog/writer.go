package steplog

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"time"
)

// Writer appends records to an output.log. It is not safe for concurrent
// use: the runner keeps one Writer behind a mutex, so that sequence numbers
// follow the order in which lines arrived.
//
// Records are buffered; Flush makes them visible to readers. After a write
// error the Writer is broken: every later call returns that error, because
// the file may end with a torn record that nothing may follow.
type Writer struct {
	bw   *bufio.Writer
	next uint64 // the sequence of the next record
	hdr  [headerSize]byte
	err  error
}

// NewWriter returns a Writer that appends to w, numbering records from
// firstSeq. Sequence 0 means "none" (a reader asks for the records after
// sequence 0 to get them all), so a firstSeq of 0 is taken as 1.
func NewWriter(w io.Writer, firstSeq uint64) *Writer {
	if firstSeq == 0 {
		firstSeq = 1
	}
	return &Writer{bw: bufio.NewWriterSize(w, bufferSize), next: firstSeq}
}

// Append writes data as one record of the given kind, or as several when it
// is longer than MaxData: every piece but the last is Partial, and the last
// keeps the caller's partial flag. It returns the sequence of the last
// record written. data may be empty (an empty line) and is not retained. t
// is stored as Unix nanoseconds, so it must lie between the years 1678 and
// 2262 (the zero time.Time does not).
func (w *Writer) Append(kind Kind, partial bool, t time.Time, data []byte) (seq uint64, err error) {
	return w.AppendLevel(kind, LevelDefault, partial, t, data)
}

// AppendLevel is Append with a level, which every piece of the line
// carries. Only stdout and stderr records have one: an event's level must
// be LevelDefault.
func (w *Writer) AppendLevel(kind Kind, level Level, partial bool, t time.Time, data []byte) (seq uint64, err error) {
	if w.err != nil {
		return 0, w.err
	}
	if !kind.valid() {
		return 0, fmt.Errorf("steplog: append: invalid kind %d", kind)
	}
	if !level.valid() || (kind == KindEvent && level != LevelDefault) {
		return 0, fmt.Errorf("steplog: append: invalid level %d for kind %d", level, kind)
	}
	nanos := t.UnixNano()
	for {
		piece, last := data, true
		if len(piece) > MaxData {
			piece, last = data[:MaxData], false
		}
		flags := byte(level) << levelShift
		if partial || !last {
			flags |= flagPart
		}
		seq = w.next
		binary.LittleEndian.PutUint32(w.hdr[0:4], uint32(restHeader+len(piece)))
		w.hdr[4] = byte(kind)
		w.hdr[5] = flags
		binary.LittleEndian.PutUint64(w.hdr[6:14], seq)
		binary.LittleEndian.PutUint64(w.hdr[14:22], uint64(nanos))
		if _, err := w.bw.Write(w.hdr[:]); err != nil {
			return 0, w.fail(err)
		}
		if _, err := w.bw.Write(piece); err != nil {
			return 0, w.fail(err)
		}
		w.next++
		if last {
			return seq, nil
		}
		data = data[MaxData:]
	}
}

// Flush writes the buffered records to the underlying writer, so that a
// reader of the file sees them. It does not sync: the caller owns the file.
func (w *Writer) Flush() error {
	if w.err != nil {
		return w.err
	}
	if err := w.bw.Flush(); err != nil {
		return w.fail(err)
	}
	return nil
}

// LastSeq returns the sequence of the last record appended, or firstSeq-1
// when there is none yet (0 for a Writer that starts at 1).
func (w *Writer) LastSeq() uint64 { return w.next - 1 }

func (w *Writer) fail(err error) error {
	w.err = fmt.Errorf("steplog: write: %w", err)
	return w.err
}
