package steplog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

// Reader reads records from an output.log that may still be growing. It reads
// through its own buffer (one ReadAt per 256 KiB, not per field) and keeps
// the bytes of an incomplete record, so tailing a file costs one ReadAt per
// call to Next at the end of the file and nothing is read twice.
type Reader struct {
	r       io.ReaderAt
	off     int64  // file offset of the next record
	buf     []byte // allocated on first use
	bufOff  int64  // file offset of buf[0]
	n       int    // valid bytes in buf
	lastSeq uint64 // sequence of the last record returned
	haveSeq bool   // lastSeq is set: the next record must follow it
}

// NewReader returns a Reader of the records of r from offset, which must be
// the start of a record: 0, or a value of Offset.
func NewReader(r io.ReaderAt, offset int64) *Reader {
	return &Reader{r: r, off: offset, bufOff: offset}
}

// Offset returns the offset just after the last record returned by Next (the
// starting offset before the first): where a new Reader resumes.
func (r *Reader) Offset() int64 { return r.off }

// Next returns the next record. It returns io.EOF when there is no complete
// record at the current offset yet: the writer may not have written or
// flushed it, so the caller tries again later and the Reader stays where it
// was. It returns an error wrapping ErrCorrupt, with the offset, when the
// bytes there cannot be a record; the Reader stays there too.
func (r *Reader) Next() (Record, error) {
	hdr, err := r.peek(headerSize)
	if err != nil {
		return Record{}, err
	}
	length := binary.LittleEndian.Uint32(hdr[0:4])
	kind := Kind(hdr[4])
	flags := hdr[5]
	level := Level(flags & levelMask >> levelShift)
	seq := binary.LittleEndian.Uint64(hdr[6:14])
	nanos := int64(binary.LittleEndian.Uint64(hdr[14:22]))
	switch {
	case length < restHeader || length > maxRest:
		return Record{}, r.corrupt("length %d", length)
	case !kind.valid():
		return Record{}, r.corrupt("kind %d", kind)
	case flags&^knownFlags != 0:
		return Record{}, r.corrupt("flags %#x", flags)
	case !level.valid() || (kind == KindEvent && level != LevelDefault):
		return Record{}, r.corrupt("level %d of a kind %d record", level, kind)
	case r.haveSeq && seq != r.lastSeq+1:
		return Record{}, r.corrupt("sequence %d after %d", seq, r.lastSeq)
	}
	total := lenSize + int(length)
	b, err := r.peek(total)
	if err != nil {
		return Record{}, err
	}
	rec := Record{
		Seq:     seq,
		Kind:    kind,
		Time:    time.Unix(0, nanos),
		Partial: flags&flagPart != 0,
		Level:   level,
	}
	if n := total - headerSize; n > 0 {
		// The one allocation per record: the caller owns Data.
		rec.Data = make([]byte, n)
		copy(rec.Data, b[headerSize:])
	}
	r.off += int64(total)
	r.lastSeq, r.haveSeq = seq, true
	return rec, nil
}

// peek returns the n bytes at r.off (n <= bufferSize), reading more of the
// file when the buffer holds fewer. Bytes already read are kept: the file is
// append-only, so they cannot change.
func (r *Reader) peek(n int) ([]byte, error) {
	start := int(r.off - r.bufOff)
	if r.buf != nil && start+n <= r.n {
		return r.buf[start : start+n], nil
	}
	if r.buf == nil {
		r.buf = make([]byte, bufferSize)
	}
	// Move what is left of the buffer to its front and fill the rest.
	r.n = copy(r.buf, r.buf[start:r.n])
	r.bufOff = r.off
	m, err := r.r.ReadAt(r.buf[r.n:], r.bufOff+int64(r.n))
	r.n += m
	if r.n >= n {
		return r.buf[:n], nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		// A record not (completely) written yet: not an error.
		return nil, io.EOF
	}
	return nil, fmt.Errorf("steplog: read at offset %d: %w", r.bufOff+int64(r.n), err)
}

func (r *Reader) corrupt(format string, args ...any) error {
	return fmt.Errorf("%w at offset %d: %s", ErrCorrupt, r.off, fmt.Sprintf(format, args...))
}
