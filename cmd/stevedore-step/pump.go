package main

import (
	"errors"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"stevedore/internal/steplog"
)

// pump reads the script's stdout and stderr, both at once, in one poll(2)
// loop rather than one goroutine per pipe: before it logs a chunk of stderr
// it logs whatever stdout holds at that moment, which was written before
// that chunk. So a mask sent on stdout (the helpers' `mask`) always covers
// a stderr line printed after it; with a goroutine per pipe, the stderr
// goroutine could win the race and log the secret.
type pump struct {
	fds     [2]int // read ends, blocking: stdout, stderr
	streams [2]*stream
	bufs    [2][]byte
	open    [2]bool
	wake    [2]int // stop writes to wake[1]; run polls wake[0]
	done    chan struct{}

	mu     sync.Mutex // guards closed: stop must not write to a closed (reused) fd
	closed bool
}

// newPipe returns the read end (raw, for the pump) and the write end (for
// the script) of a pipe. Both are close-on-exec: exec.Cmd dups the write end
// onto the script's stdout or stderr.
func newPipe() (int, *os.File, error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return -1, nil, err
	}
	return p[0], os.NewFile(uintptr(p[1]), "|1"), nil
}

// newPump returns a pump of the two read ends, which it owns and closes.
func newPump(o *output, stdoutFD, stderrFD int) (*pump, error) {
	p := &pump{
		fds:  [2]int{stdoutFD, stderrFD},
		open: [2]bool{true, true},
		done: make(chan struct{}),
	}
	if err := unix.Pipe2(p.wake[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, err
	}
	for i, kind := range []steplog.Kind{steplog.KindStdout, steplog.KindStderr} {
		p.streams[i] = &stream{o: o, kind: kind}
		p.bufs[i] = make([]byte, readSize)
	}
	return p, nil
}

// run reads until both pipes reach EOF or stop is called, then ends the
// streams (a line without its newline becomes a Partial record) and closes
// the pipes.
func (p *pump) run() {
	defer close(p.done)
	defer func() {
		for i, fd := range p.fds {
			if p.open[i] {
				p.streams[i].close()
			}
			unix.Close(fd)
		}
		p.mu.Lock()
		p.closed = true
		unix.Close(p.wake[0])
		unix.Close(p.wake[1])
		p.mu.Unlock()
	}()
	pfds := make([]unix.PollFd, 0, 3)
	for p.open[0] || p.open[1] {
		pfds = pfds[:0]
		for i, fd := range p.fds {
			if p.open[i] {
				pfds = append(pfds, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
			}
		}
		pfds = append(pfds, unix.PollFd{Fd: int32(p.wake[0]), Events: unix.POLLIN})
		if _, err := unix.Poll(pfds, -1); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		if pfds[len(pfds)-1].Revents != 0 {
			return // stopped
		}
		var ready [2]bool
		j := 0
		for i := range p.fds {
			if p.open[i] {
				ready[i] = pfds[j].Revents != 0
				j++
			}
		}
		if ready[0] {
			p.read(0)
		}
		if ready[1] {
			p.readStderr()
		}
	}
}

// stop makes run return soon, whether the pipes reached EOF or not.
func (p *pump) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed {
		_, _ = unix.Write(p.wake[1], []byte{0})
	}
}

// readChunk reads what pipe i holds; 0 at EOF (the stream is then ended).
func (p *pump) readChunk(i int) int {
	for {
		n, err := unix.Read(p.fds[i], p.bufs[i])
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return -1
		case n <= 0 || err != nil:
			p.open[i] = false
			p.streams[i].close()
			return 0
		}
		return n
	}
}

// read reads and logs a chunk of pipe i, and returns its length.
func (p *pump) read(i int) int {
	n := p.readChunk(i)
	if n > 0 {
		p.streams[i].chunk(p.bufs[i][:n])
	}
	return n
}

// readStderr reads a chunk of stderr, logs what stdout holds now, then the
// chunk. A bounded number of stdout reads: a stdout that never stops must
// not starve stderr.
func (p *pump) readStderr() {
	n := p.readChunk(1)
	if n <= 0 {
		return
	}
	for k := 0; k < 16 && p.open[0] && readable(p.fds[0]); k++ {
		if p.read(0) < readSize {
			break
		}
	}
	p.streams[1].chunk(p.bufs[1][:n])
}

// readable reports whether a read of fd would not block.
func readable(fd int) bool {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(pfd, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err == nil && n > 0 && pfd[0].Revents != 0
	}
}
