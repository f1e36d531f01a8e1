package executor

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"stevedore/internal/testenv"
)

func writeTemp(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCgroup2Mount(t *testing.T) {
	tests := []struct {
		name, mountinfo, want string
		wantErr               bool
	}{
		{"pure v2", "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n", "/sys/fs/cgroup", false},
		{"hybrid", "30 25 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n" +
			"39 25 0:36 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n", "/sys/fs/cgroup/unified", false},
		{"escaped mount point", `40 25 0:36 / /mnt/with\040space rw - cgroup2 none rw` + "\n", "/mnt/with space", false},
		{"only a part of the hierarchy", "41 25 0:36 /system.slice /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n", "", true},
		{"v1 only", "30 25 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n", "", true},
		{"no mounts", "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := cgroup2Mount(writeTemp(t, tt.mountinfo))
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("got %q, %v; want %q (error %v)", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestOwnCgroup2(t *testing.T) {
	tests := []struct {
		name, cgroup, want string
		wantErr            bool
	}{
		{"systemd service", "0::/system.slice/stevedore-agent.service\n", "/system.slice/stevedore-agent.service", false},
		{"hybrid, root", "4:memory:/x\n1:cpu:/\n0::/\n", "/", false},
		{"outside the namespace", "0::/../other\n", "", true},
		{"v1 only", "4:memory:/x\n1:cpu:/\n", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ownCgroup2(writeTemp(t, tt.cgroup))
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("got %q, %v; want %q (error %v)", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

// Where the kernel will not start a process into the step's cgroup (here a
// directory that is no cgroup; Linux before 5.7 refuses them all), the
// runner still starts, tracked by session, and cgroups are off for the
// steps after it, as Tracking says.
func TestHostStartsWithoutTheCgroupItCannotUse(t *testing.T) {
	bundle, err := LoadBundle(testenv.BundleDir(t))
	if err != nil {
		t.Fatal(err)
	}
	h := NewHost(bundle, hclog.NewNullLogger())
	h.cg = stepCgroups{dir: t.TempDir()} // not a cgroup: clone3 refuses it
	stepDir := t.TempDir()
	if err := os.Mkdir(filepath.Join(stepDir, "work"), 0o755); err != nil {
		t.Fatal(err)
	}
	spec := &Spec{Ticket: "t1", StepDir: stepDir}
	if err := h.Start(context.Background(), spec, nil); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if _, err := h.Wait(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	if got := h.Tracking(); !strings.HasPrefix(got, "session") {
		t.Errorf("Tracking() = %q after the refusal, want session", got)
	}
	if _, err := os.Stat(filepath.Join(stepDir, hostCgroupFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a cgroup is recorded for a runner that is not in it: %v", err)
	}
}

func TestRecordedCgroupTakesOnlyAStepCgroup(t *testing.T) {
	tests := []struct {
		recorded, want string
	}{
		{"/sys/fs/cgroup/unified/stevedore-steps/0123456789abcdef01234567", "/sys/fs/cgroup/unified/stevedore-steps/0123456789abcdef01234567"},
		{"/sys/fs/cgroup/system.slice/stevedore-agent.service", ""},
		{"/sys/fs/cgroup/stevedore-steps/../system.slice/0123456789abcdef01234567", ""},
		{"stevedore-steps/0123456789abcdef01234567", ""},
		{"/sys/fs/cgroup/stevedore-steps/0123456789ABCDEF01234567", ""},
		{"/sys/fs/cgroup/stevedore-steps/", ""},
	}
	for _, tt := range tests {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, hostCgroupFile), []byte(tt.recorded+"\n"), 0o600)
		if got := recordedCgroup(dir); got != tt.want {
			t.Errorf("recorded %q: got %q, want %q", tt.recorded, got, tt.want)
		}
	}
}
