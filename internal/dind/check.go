package dind

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNotPrivileged is wrapped by Check's error when the container lacks
// what dockerd needs: the capabilities and the writable cgroups that
// --privileged gives.
var ErrNotPrivileged = errors.New("Docker in Docker needs a privileged container (docker run --privileged)")

// ErrSharedNetwork is wrapped by Check's error when the network namespace
// is the host's (docker run --network host) or already has an engine's
// bridge: dockerd configures the bridge "docker0" of the namespace it
// starts in (with --bridge=none it deletes it), so it would take over or
// remove the host engine's network.
var ErrSharedNetwork = errors.New("Docker in Docker needs a network namespace of its own")

// The capabilities a default container lacks and dockerd cannot do
// without (mounts, and its bridge and iptables rules).
var neededCaps = []struct {
	bit  uint
	name string
}{
	{unix.CAP_SYS_ADMIN, "CAP_SYS_ADMIN"},
	{unix.CAP_NET_ADMIN, "CAP_NET_ADMIN"},
}

// Check reports, before anything is started, why an engine could not run
// here: not privileged, the host's network, the data root on the
// container's overlay file system, or an engine already answering on the
// socket (the host's socket mounted).
func Check(o Options) error {
	o.defaults()
	if err := checkPrivileges("/proc/self/status", "/proc/self/mountinfo"); err != nil {
		return err
	}
	if err := checkNetwork("/sys/class/net"); err != nil {
		return err
	}
	if err := checkDataRoot(o.DataRoot); err != nil {
		return err
	}
	return checkSocket(o.Socket)
}

func checkPrivileges(status, mountinfo string) error {
	var missing []string
	eff, err := effectiveCaps(status)
	if err != nil {
		return err
	}
	for _, c := range neededCaps {
		if eff&(1<<c.bit) == 0 {
			missing = append(missing, "capability "+c.name+" missing")
		}
	}
	ro, found, err := readOnlyCgroups(mountinfo)
	if err != nil {
		return err
	}
	switch {
	case !found:
		missing = append(missing, "no cgroup file system mounted")
	case len(ro) == 1:
		missing = append(missing, "cgroup file system read-only at "+ro[0])
	case len(ro) > 1:
		missing = append(missing, fmt.Sprintf("cgroup file systems read-only at %s and %d more", ro[0], len(ro)-1))
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s; or set DISABLE_DIND=Y and give the server the host's engine", ErrNotPrivileged, strings.Join(missing, "; "))
	}
	return nil
}

// effectiveCaps reads CapEff from a /proc/PID/status file.
func effectiveCaps(status string) (uint64, error) {
	f, err := os.Open(status)
	if err != nil {
		return 0, fmt.Errorf("capabilities: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return 0, fmt.Errorf("capabilities: CapEff %q: %w", v, err)
			}
			return caps, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("capabilities: %w", err)
	}
	return 0, fmt.Errorf("capabilities: no CapEff in %s", status)
}

// readOnlyCgroups lists the cgroup (v1 or v2) mount points of a mountinfo
// file that are mounted read-only, as Docker mounts them in a container
// that is not privileged; found says whether there was any.
func readOnlyCgroups(mountinfo string) (ro []string, found bool, err error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return nil, false, fmt.Errorf("mounts: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fstype, _, _ := strings.Cut(post, " ")
		if fstype != "cgroup" && fstype != "cgroup2" {
			continue
		}
		fields := strings.Fields(pre)
		if len(fields) < 6 {
			continue
		}
		found = true
		for opt := range strings.SplitSeq(fields[5], ",") {
			if opt == "ro" {
				ro = append(ro, fields[4])
				break
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, false, fmt.Errorf("mounts: %w", err)
	}
	return ro, found, nil
}

// checkNetwork refuses the host's network namespace: one with an engine's
// bridge (docker0), or with a physical network device (sysfs lists a
// container's veth and the loopback under devices/virtual; the host's
// NICs sit on a bus). sysfs shows the interfaces of the namespace it was
// mounted in, which for a container is its own.
func checkNetwork(sysClassNet string) error {
	entries, err := os.ReadDir(sysClassNet)
	if err != nil {
		return fmt.Errorf("network interfaces: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if name == "docker0" {
			return fmt.Errorf("%w: this one already has the bridge docker0 (the container runs with --network host?), which the engine started here would take over or delete; run the container on a network of its own, or set DISABLE_DIND=Y", ErrSharedNetwork)
		}
		target, err := os.Readlink(filepath.Join(sysClassNet, name))
		if err != nil {
			continue
		}
		if !strings.Contains(target, "/devices/virtual/") {
			return fmt.Errorf("%w: this one has the physical interface %s, so it is the host's (the container runs with --network host?), whose bridge and firewall the engine started here would change; run the container on a network of its own, or set DISABLE_DIND=Y", ErrSharedNetwork, name)
		}
	}
	return nil
}

// checkDataRoot refuses a data root on overlayfs: overlay2 cannot use it
// as its upper layer, and dockerd would fall back to vfs, a full copy of
// every image layer.
func checkDataRoot(dir string) error {
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return fmt.Errorf("data root: %w", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("data root %s: %w", dir, err)
	}
	if st.Type == unix.OVERLAYFS_SUPER_MAGIC {
		return fmt.Errorf("data root %s is on the container's overlay file system, where overlay2 cannot work: mount a volume there (-v NAME:%s)", dir, dir)
	}
	return nil
}

// checkSocket refuses a socket something already answers on: the host's
// engine socket mounted into the container, most likely.
func checkSocket(path string) error {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return nil // absent, or left by an engine that is gone: dockerd replaces it
	}
	c.Close()
	return fmt.Errorf("an engine already answers on %s (the host's socket mounted into the container?): set DISABLE_DIND=Y to drive that one, or do not mount it", path)
}
