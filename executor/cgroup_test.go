package executor

import (
	"os"
	"path/filepath"
	"testing"
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
