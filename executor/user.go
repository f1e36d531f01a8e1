package executor

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// resolveUser turns an image's USER ("", "app", "1000", "app:staff",
// "1000:1000") into numeric ids, reading the created container's
// /etc/passwd and /etc/group for names. Nothing in the image runs.
func resolveUser(ctx context.Context, api ProbeAPI, containerID, user string) (uid, gid int, err error) {
	if user == "" {
		return 0, 0, nil
	}
	name, group, hasGroup := strings.Cut(user, ":")
	uid, gid = -1, -1
	if n, err := strconv.Atoi(name); err == nil {
		uid = n
	} else {
		entry, err := lookupEntry(ctx, api, containerID, "/etc/passwd", name)
		if err != nil {
			return 0, 0, fmt.Errorf("image user %q: %w", user, err)
		}
		if uid, err = strconv.Atoi(entry[2]); err != nil {
			return 0, 0, fmt.Errorf("image user %q: /etc/passwd uid %q", user, entry[2])
		}
		if gid, err = strconv.Atoi(entry[3]); err != nil {
			return 0, 0, fmt.Errorf("image user %q: /etc/passwd gid %q", user, entry[3])
		}
	}
	switch {
	case hasGroup:
		if n, err := strconv.Atoi(group); err == nil {
			gid = n
			break
		}
		entry, err := lookupEntry(ctx, api, containerID, "/etc/group", group)
		if err != nil {
			return 0, 0, fmt.Errorf("image group %q: %w", group, err)
		}
		if gid, err = strconv.Atoi(entry[2]); err != nil {
			return 0, 0, fmt.Errorf("image group %q: /etc/group gid %q", group, entry[2])
		}
	case gid < 0:
		// A numeric user without a group: its passwd entry if any, else gid 0 as Docker does.
		gid = 0
		if entry, err := lookupUID(ctx, api, containerID, uid); err == nil {
			if g, err := strconv.Atoi(entry[3]); err == nil {
				gid = g
			}
		}
	}
	return uid, gid, nil
}

var errNoEntry = errors.New("no such entry")

// lookupEntry returns the colon-separated fields of name's line in file.
func lookupEntry(ctx context.Context, api ProbeAPI, id, file, name string) ([]string, error) {
	return scanFile(ctx, api, id, file, func(f []string) bool { return f[0] == name })
}

func lookupUID(ctx context.Context, api ProbeAPI, id string, uid int) ([]string, error) {
	u := strconv.Itoa(uid)
	return scanFile(ctx, api, id, "/etc/passwd", func(f []string) bool { return f[2] == u })
}

func scanFile(ctx context.Context, api ProbeAPI, id, file string, match func([]string) bool) ([]string, error) {
	rc, _, err := api.CopyFromContainer(ctx, id, file)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	if _, err := tr.Next(); err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	sc := bufio.NewScanner(io.LimitReader(tr, 4<<20))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) >= 4 && match(f) {
			return f, nil
		}
	}
	return nil, fmt.Errorf("%s: %w", file, errNoEntry)
}

// chownTree hands dir and everything in it to uid:gid, so a non-root image
// user can write its workspace and the runner its log. Root needs nothing.
func chownTree(dir string, uid, gid int) error {
	if uid == 0 && gid == 0 {
		return nil
	}
	err := filepath.WalkDir(dir, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, uid, gid)
	})
	if err != nil {
		return fmt.Errorf("give the step directory to uid %d gid %d: %w", uid, gid, err)
	}
	return nil
}
