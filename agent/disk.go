package agent

import (
	"errors"
	"fmt"
	"syscall"
)

// DefaultMinFreeDisk is the free space the state dir must keep for the
// agent to accept a new step: its journal, logs, workspaces and uploads
// all live there, and a full disk loses lines.
const DefaultMinFreeDisk int64 = 500 << 20

// errLowDisk: the state dir's file system has less free space than the
// agent's threshold.
var errLowDisk = errors.New("not enough free disk space")

// freeDisk is the space available to the agent on dir's file system.
func freeDisk(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("free space of %s: %w", dir, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// checkDisk refuses a new step while the state dir is below the threshold.
// A threshold below zero turns the check off.
func (a *Agent) checkDisk() error {
	min := a.cfg.MinFreeDisk
	if min < 0 {
		return nil
	}
	if min == 0 {
		min = DefaultMinFreeDisk
	}
	free, err := freeDisk(a.cfg.StateDir)
	if err != nil {
		// Not knowing is no reason to refuse work.
		a.log.Warn("could not read the state dir's free space", "error", err)
		return nil
	}
	if free < min {
		return fmt.Errorf("%w: %s free in %s, below the agent's threshold of %s (min_free_disk); free some space or lower the threshold",
			errLowDisk, byteSize(free), a.cfg.StateDir, byteSize(min))
	}
	return nil
}

// byteSize prints n in the largest binary unit that keeps it readable.
func byteSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}
