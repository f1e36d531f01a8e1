package executor

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// StageBundle copies b into root/<content hash>/, unless a copy is there
// already, and loads the copy. The agent mounts and runs the staged copy,
// for two reasons: the state dir is where the Docker Engine must see the
// agent's files anyway (an agent in a container shares it with the host at
// the same path, as it does the workspaces), and an upgrade that replaces
// the installed bundle in place does not change what running steps see.
// Other staged copies untouched for longer than keep are removed.
func StageBundle(b *Bundle, root string, keep time.Duration) (*Bundle, error) {
	sum, files, err := bundleDigest(b.Dir)
	if err != nil {
		return nil, fmt.Errorf("stage the bundle: %w", err)
	}
	dest := filepath.Join(root, sum[:16])
	if _, err := os.Stat(filepath.Join(dest, ManifestFile)); err != nil {
		if err := os.MkdirAll(root, 0o755); err != nil {
			return nil, fmt.Errorf("stage the bundle: %w", err)
		}
		tmp, err := os.MkdirTemp(root, ".staging-")
		if err != nil {
			return nil, fmt.Errorf("stage the bundle: %w", err)
		}
		defer os.RemoveAll(tmp)
		if err := os.Chmod(tmp, 0o755); err != nil {
			return nil, err
		}
		for _, rel := range files {
			if err := copyFile(filepath.Join(b.Dir, rel), filepath.Join(tmp, rel)); err != nil {
				return nil, fmt.Errorf("stage the bundle: %w", err)
			}
		}
		if err := os.Rename(tmp, dest); err != nil && !os.IsExist(err) {
			// Another process may have staged the same bundle meanwhile.
			if _, serr := os.Stat(filepath.Join(dest, ManifestFile)); serr != nil {
				return nil, fmt.Errorf("stage the bundle: %w", err)
			}
		}
	}
	now := time.Now()
	os.Chtimes(dest, now, now) // in use: not pruned by another agent process
	pruneStaged(root, filepath.Base(dest), keep)
	return LoadBundle(dest)
}

// bundleDigest hashes every regular file of dir (names and contents) and
// returns the hash and the files, relative and sorted.
func bundleDigest(dir string) (string, []string, error) {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", nil, err
	}
	var files []string
	err = filepath.WalkDir(real, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			rel, err := filepath.Rel(real, p)
			if err != nil {
				return err
			}
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		return "", nil, err
	}
	sort.Strings(files)
	h := sha256.New()
	for _, rel := range files {
		fi, err := os.Stat(filepath.Join(real, rel))
		if err != nil {
			return "", nil, err
		}
		fmt.Fprintf(h, "%s\x00%o\x00", rel, fi.Mode().Perm())
		f, err := os.Open(filepath.Join(real, rel))
		if err != nil {
			return "", nil, err
		}
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", nil, err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), files, nil
}

func copyFile(src, dst string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, fi.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// pruneStaged removes staged bundles other than current not touched for
// keep (a step reattached after an upgrade may still use a recent one).
func pruneStaged(root, current string, keep time.Duration) {
	ents, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range ents {
		if !e.IsDir() || e.Name() == current {
			continue
		}
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > keep {
			os.RemoveAll(filepath.Join(root, e.Name()))
		}
	}
}
