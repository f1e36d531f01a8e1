package executor

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The bundle is staged once per content: the same bundle twice is one
// copy, a changed one a second copy, and old copies go after keep.
func TestStageBundle(t *testing.T) {
	src := t.TempDir()
	bundleTestProgram(t, src, true)
	if _, err := WriteManifest(src, RunnerName, RunnerName, "1.0.0"); err != nil {
		t.Fatal(err)
	}
	b, err := LoadBundle(src)
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(t.TempDir(), "bundles")
	first, err := StageBundle(b, root, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(first.Dir) != root || first.Manifest.Version != "1.0.0" {
		t.Fatalf("staged at %s: %+v", first.Dir, first.Manifest)
	}
	if fi, err := os.Stat(first.RunnerPath()); err != nil || fi.Mode().Perm()&0o111 == 0 {
		t.Fatalf("staged runner: %v %v", fi, err)
	}
	again, err := StageBundle(b, root, time.Hour)
	if err != nil || again.Dir != first.Dir {
		t.Fatalf("the same bundle staged again at %s (%v), want %s", again.Dir, err, first.Dir)
	}
	// An upgrade: a new manifest version is new content.
	if _, err := WriteManifest(src, RunnerName, RunnerName, "2.0.0"); err != nil {
		t.Fatal(err)
	}
	b2, _ := LoadBundle(src)
	old := time.Now().Add(-2 * time.Hour)
	os.Chtimes(first.Dir, old, old)
	second, err := StageBundle(b2, root, time.Hour)
	if err != nil || second.Dir == first.Dir || second.Manifest.Version != "2.0.0" {
		t.Fatalf("upgraded bundle staged at %s (%v)", second.Dir, err)
	}
	if _, err := os.Stat(first.Dir); !os.IsNotExist(err) {
		t.Errorf("the old staged copy, untouched for 2h with keep 1h, is still there: %v", err)
	}
	ents, _ := os.ReadDir(root)
	if len(ents) != 1 {
		t.Errorf("%d entries in %s, want the current copy only", len(ents), root)
	}
}
