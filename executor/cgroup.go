package executor

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// stepsCgroup is the cgroup, under the agent's, of its host steps' cgroups.
const stepsCgroup = "stevedore-steps"

// hostCgroupFile records, in a step directory, the cgroup its host runner
// was started in, so that an agent started later finds it again even if it
// runs in another cgroup itself.
const hostCgroupFile = "runner.cgroup"

// stepCgroups puts each host step in a cgroup v2 of its own, made under the
// agent's own cgroup. A cgroup is the one record of a step's processes that
// none of them can leave without privilege: a daemon that called setsid,
// cleared its environment and was reparented to init is still in it, and
// cgroup.kill ends them all at once. No controller is enabled, so this
// works in a systemd service with Delegate=yes, beside a v1 hierarchy
// (the "unified" mount) and in a container with a writable cgroupfs.
type stepCgroups struct {
	// dir is the parent of the steps' cgroups; empty when there is no
	// writable cgroup v2, and host steps are tracked by session alone.
	dir string
	// why says why dir is empty, for capabilities and the log.
	why string
}

// findStepCgroups finds the cgroup v2 hierarchy and the agent's place in it
// and makes the steps' parent there.
func findStepCgroups() stepCgroups {
	mount, err := cgroup2Mount("/proc/self/mountinfo")
	if err != nil {
		return stepCgroups{why: err.Error()}
	}
	own, err := ownCgroup2("/proc/self/cgroup")
	if err != nil {
		return stepCgroups{why: err.Error()}
	}
	dir := filepath.Join(mount, own, stepsCgroup)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return stepCgroups{why: fmt.Sprintf("cannot make %s: %v", dir, err)}
	}
	if _, err := os.Stat(filepath.Join(dir, "cgroup.procs")); err != nil {
		return stepCgroups{why: fmt.Sprintf("%s is not a cgroup: %v", dir, err)}
	}
	return stepCgroups{dir: dir}
}

// Tracking says how host steps' processes are found, for capabilities.
func (c stepCgroups) Tracking() string {
	if c.dir == "" {
		return "session (no writable cgroup v2: " + c.why + ")"
	}
	return "cgroup " + c.dir
}

// cgroup2Mount returns where the cgroup v2 hierarchy is mounted.
func cgroup2Mount(mountinfo string) (string, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return "", fmt.Errorf("mounts: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok || !strings.HasPrefix(post, "cgroup2 ") {
			continue
		}
		f := strings.Fields(pre)
		if len(f) < 5 {
			continue
		}
		if f[3] != "/" {
			continue // a bind mount of a part of the hierarchy: paths would not match
		}
		return unescapeMount(f[4]), nil
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("mounts: %w", err)
	}
	return "", errors.New("no cgroup2 file system is mounted")
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ownCgroup2 returns this process's cgroup v2 path ("0::/path").
func ownCgroup2(procCgroup string) (string, error) {
	b, err := os.ReadFile(procCgroup)
	if err != nil {
		return "", fmt.Errorf("own cgroup: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		if p, ok := strings.CutPrefix(strings.TrimRight(line, "\n"), "0::"); ok {
			// A cgroup namespace can show the path as outside it.
			if strings.HasPrefix(p, "/..") {
				return "", fmt.Errorf("own cgroup %q is outside this cgroup namespace", p)
			}
			return p, nil
		}
	}
	return "", errors.New("this process is in no cgroup v2")
}

// make creates the step's cgroup and returns its path and an open
// directory for clone3's CLONE_INTO_CGROUP, so the runner is in it from its
// first instruction and nothing it forks can be outside.
func (c stepCgroups) make(stepDir string) (string, *os.File, error) {
	if c.dir == "" {
		return "", nil, nil
	}
	abs, err := filepath.Abs(stepDir)
	if err != nil {
		return "", nil, err
	}
	// Named by the step directory: unique across agents on one host, the
	// same for a retried start.
	sum := sha256.Sum256([]byte(abs))
	path := filepath.Join(c.dir, hex.EncodeToString(sum[:12]))
	if err := os.Mkdir(path, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", nil, fmt.Errorf("step cgroup: %w", err)
	}
	f, err := os.Open(path)
	if err != nil {
		return "", nil, fmt.Errorf("step cgroup: %w", err)
	}
	return path, f, nil
}

// recordedCgroup is the cgroup a step's runner was started in, or "".
// Only a path of the form make gives is taken: the file lies in a
// directory the step can write, and cgroup.kill must never reach another
// cgroup (the agent's own, say).
func recordedCgroup(stepDir string) string {
	b, err := os.ReadFile(filepath.Join(stepDir, hostCgroupFile))
	if err != nil {
		return ""
	}
	p := strings.TrimSpace(string(b))
	name := filepath.Base(p)
	if !filepath.IsAbs(p) || filepath.Clean(p) != p || filepath.Base(filepath.Dir(p)) != stepsCgroup || len(name) != 24 || strings.Trim(name, "0123456789abcdef") != "" {
		return ""
	}
	return p
}

// cgroupProcs lists the processes in cgroup path.
func cgroupProcs(path string) []int {
	b, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
	if err != nil {
		return nil
	}
	var out []int
	for f := range bytes.FieldsSeq(b) {
		if pid, err := strconv.Atoi(string(f)); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// killCgroup SIGKILLs every process in cgroup path. cgroup.kill (Linux
// 5.14) does it atomically, also for processes forking meanwhile; before
// that, the members are killed in rounds until none is left.
func killCgroup(path string) {
	err := os.WriteFile(filepath.Join(path, "cgroup.kill"), []byte("1"), 0)
	if err == nil || errors.Is(err, fs.ErrNotExist) && !exists(path) {
		return
	}
	for range 10 {
		procs := cgroupProcs(path)
		if len(procs) == 0 {
			return
		}
		for _, pid := range procs {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// cgroupPopulated reads cgroup.events: whether any process is left.
func cgroupPopulated(path string) bool {
	b, err := os.ReadFile(filepath.Join(path, "cgroup.events"))
	if err != nil {
		return false
	}
	return bytes.Contains(b, []byte("populated 1"))
}

// removeCgroup kills what is left in cgroup path and removes it once
// empty; killed processes take a moment to leave.
func removeCgroup(path string, grace time.Duration) error {
	if !exists(path) {
		return nil
	}
	killCgroup(path)
	deadline := time.Now().Add(grace)
	for cgroupPopulated(path) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove step cgroup: %w", err)
	}
	return nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
