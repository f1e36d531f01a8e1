package dind

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// nestCgroup2 lets dockerd make cgroups under a cgroup v2 root of this
// container's own (a private cgroup namespace, Docker's default on v2).
// A cgroup with processes cannot enable controllers for children ("no
// internal processes"), so every process of the root moves to a child,
// "init", and the root then delegates all its controllers; moby's dind
// script does the same. Nothing happens on cgroup v1, nor when this process
// is not at the root of its namespace (the host's hierarchy: its processes
// are not ours to move).
func nestCgroup2(root, procCgroup string) error {
	controllers, err := os.ReadFile(filepath.Join(root, "cgroup.controllers"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil // cgroup v1, or hybrid with v1 at the root
	}
	if err != nil {
		return fmt.Errorf("cgroup v2: %w", err)
	}
	own, err := os.ReadFile(procCgroup)
	if err != nil {
		return fmt.Errorf("cgroup v2: own cgroup: %w", err)
	}
	atRoot := false
	for line := range strings.Lines(string(own)) {
		atRoot = atRoot || strings.TrimSpace(line) == "0::/"
	}
	if !atRoot {
		return nil
	}
	init := filepath.Join(root, "init")
	if err := os.Mkdir(init, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("cgroup v2: %w", err)
	}
	procs, err := os.ReadFile(filepath.Join(root, "cgroup.procs"))
	if err != nil {
		return fmt.Errorf("cgroup v2: %w", err)
	}
	for _, pid := range strings.Fields(string(procs)) {
		err := os.WriteFile(filepath.Join(init, "cgroup.procs"), []byte(pid), 0)
		// A process that ended meanwhile cannot move, nor needs to.
		if err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("cgroup v2: move %s to %s: %w", pid, init, err)
		}
	}
	var enable []string
	for _, c := range strings.Fields(string(controllers)) {
		enable = append(enable, "+"+c)
	}
	if len(enable) == 0 {
		return nil
	}
	if err := os.WriteFile(filepath.Join(root, "cgroup.subtree_control"), []byte(strings.Join(enable, " ")), 0); err != nil {
		return fmt.Errorf("cgroup v2: delegate controllers: %w", err)
	}
	return nil
}
