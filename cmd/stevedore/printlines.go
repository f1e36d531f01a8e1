package main

import (
	"bufio"
	"io"
	"os"

	"golang.org/x/sys/unix"

	pb "stevedore/proto/stevedore/v1"
)

// ANSI styles of a highlighted line on a terminal.
const (
	bold  = "\x1b[1m"
	reset = "\x1b[0m"
)

// linePrinter writes a step's log lines as `stevedore run` shows them, in
// direct and in --server mode alike:
//
//   - stdout lines to stdout; stderr lines and the agent's ("stevedore: ")
//     to stderr;
//   - verbose lines only with --verbose (the agent sends them all);
//   - highlighted lines in bold where the stream is a terminal, unmarked
//     elsewhere, so that stdout piped on stays the script's output;
//   - wait lines as ordinary lines;
//   - warning and error lines to stderr, marked "warning: " and "error: ".
//
// A mark goes at a line's start only: the next pieces of a partial line,
// from the same source, continue it unmarked.
type linePrinter struct {
	stdout, stderr *bufio.Writer
	verbose        bool
	// styleOut, styleErr: the stream is a terminal, where ANSI styles show.
	styleOut, styleErr bool
	last               *bufio.Writer // flushed when the other is written to
	// open is the source of the partial line open on a writer, if any.
	open map[*bufio.Writer]pb.LogSource
}

func newLinePrinter(stdout, stderr *bufio.Writer, outFile, errFile io.Writer, verbose bool) *linePrinter {
	return &linePrinter{stdout: stdout, stderr: stderr, verbose: verbose,
		styleOut: styled(outFile), styleErr: styled(errFile), open: map[*bufio.Writer]pb.LogSource{}}
}

// styled reports whether w is a terminal that takes ANSI styles: not when
// NO_COLOR is set (no-color.org) or TERM is dumb.
func styled(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || os.Getenv("NO_COLOR") != "" || os.Getenv("TERM") == "dumb" {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// print writes the lines after `after` and returns the last sequence. Both
// writers are buffered; the one not written to is flushed at each switch,
// so a terminal shows stdout and stderr in the step's own order.
func (p *linePrinter) print(lines []*pb.LogLine, after uint64) uint64 {
	for _, l := range lines {
		if l.GetSequence() <= after {
			continue
		}
		after = l.GetSequence()
		level := l.GetLevel()
		if level == pb.LogLevel_LOG_LEVEL_VERBOSE && !p.verbose {
			continue
		}
		w, style := p.stdout, p.styleOut
		if l.GetSource() != pb.LogSource_LOG_SOURCE_STDOUT || level == pb.LogLevel_LOG_LEVEL_WARNING || level == pb.LogLevel_LOG_LEVEL_ERROR {
			w, style = p.stderr, p.styleErr
		}
		if p.last != nil && p.last != w {
			p.last.Flush()
		}
		p.last = w
		if src, ok := p.open[w]; !ok || src != l.GetSource() {
			if l.GetSource() == pb.LogSource_LOG_SOURCE_AGENT {
				w.WriteString("stevedore: ")
			}
			switch level {
			case pb.LogLevel_LOG_LEVEL_WARNING:
				w.WriteString("warning: ")
			case pb.LogLevel_LOG_LEVEL_ERROR:
				w.WriteString("error: ")
			}
		}
		highlight := style && level == pb.LogLevel_LOG_LEVEL_HIGHLIGHT
		if highlight {
			w.WriteString(bold)
		}
		w.Write(l.GetText())
		if highlight {
			w.WriteString(reset)
		}
		if l.GetPartial() {
			p.open[w] = l.GetSource()
		} else {
			delete(p.open, w)
			w.WriteByte('\n')
		}
	}
	return after
}
