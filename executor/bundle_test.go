package executor

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"stevedore/internal/testenv"
)

// bundleTestProgram builds a tiny Go program into dir and returns its path:
// with cgo, a dynamically linked glibc executable (external linking, as
// `make build` links the runner); without, a static one.
func bundleTestProgram(t *testing.T, dir string, cgo bool) string {
	t.Helper()
	gotool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go tool to build a test program: %v", err)
	}
	src := t.TempDir()
	main := "package main\n\nfunc main() { println(\"hello\") }\n"
	env := []string{"CGO_ENABLED=0"}
	args := []string{"build", "-o", filepath.Join(dir, RunnerName), "."}
	if cgo {
		if _, err := exec.LookPath("gcc"); err != nil {
			testenv.Unavailable(t, "a C compiler for a cgo test program: %v", err)
		}
		main = "package main\n\n// #include <stdio.h>\n// static void hello(void) { puts(\"hello\"); }\nimport \"C\"\n\nfunc main() { C.hello() }\n"
		env = []string{"CGO_ENABLED=1"}
		args = []string{"build", "-ldflags=-linkmode=external", "-o", filepath.Join(dir, RunnerName), "."}
	}
	for name, data := range map[string]string{"go.mod": "module probetest\n\ngo 1.24\n", "main.go": main} {
		if err := os.WriteFile(filepath.Join(src, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(gotool, args...)
	cmd.Dir = src
	cmd.Env = append(os.Environ(), append(env, "GOWORK=off", "GOFLAGS=")...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return filepath.Join(dir, RunnerName)
}

func TestCompareGlibc(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"2.9", "2.10", -1},
		{"2.10", "2.34", -1},
		{"2.34", "2.34", 0},
		{"2.34", "2.34.0", 0},
		{"2.3.2", "2.3", 1},
		{"2.2.5", "2.3", -1},
		{"2.36", "2.4", 1},
		{"GLIBC_2.31", "2.32", -1},
		{"3.0", "2.99", 1},
		{"2.x", "2.1", 1},
	}
	for _, tt := range tests {
		if got := CompareGlibc(tt.a, tt.b); got != tt.want {
			t.Errorf("CompareGlibc(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
		if got := CompareGlibc(tt.b, tt.a); got != -tt.want {
			t.Errorf("CompareGlibc(%q, %q) = %d, want %d", tt.b, tt.a, got, -tt.want)
		}
	}
	versions := []string{"GLIBC_ABI_DT_RELR", "GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.10", "GLIBC_2.3.2", "GLIBC_2.9"}
	slices.SortFunc(versions, compareVersionNames)
	want := []string{"GLIBC_2.2.5", "GLIBC_2.3.2", "GLIBC_2.9", "GLIBC_2.10", "GLIBC_2.34", "GLIBC_ABI_DT_RELR"}
	if !slices.Equal(versions, want) {
		t.Errorf("sorted %v, want %v", versions, want)
	}
}

func TestRequirementsFromELF(t *testing.T) {
	t.Run("cgo", func(t *testing.T) {
		req, err := RequirementsFromELF(bundleTestProgram(t, t.TempDir(), true))
		if err != nil {
			t.Fatal(err)
		}
		checkGlibcRequirements(t, req)
		if !slices.Contains(req.SharedLibraries, "libc.so.6") {
			t.Errorf("shared libraries %v lack libc.so.6", req.SharedLibraries)
		}
	})
	t.Run("static", func(t *testing.T) {
		req, err := RequirementsFromELF(bundleTestProgram(t, t.TempDir(), false))
		if err != nil {
			t.Fatal(err)
		}
		if req.Libc != "" || req.Interpreter != "" || len(req.GlibcVersions) > 0 || len(req.SharedLibraries) > 0 {
			t.Errorf("a static Go program requires %+v, want nothing", req)
		}
	})
	t.Run("/bin/ls", func(t *testing.T) {
		if _, err := os.Stat("/bin/ls"); err != nil {
			t.Skip(err)
		}
		req, err := RequirementsFromELF("/bin/ls")
		if err != nil {
			t.Fatal(err)
		}
		checkGlibcRequirements(t, req)
	})
	t.Run("not ELF", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "script")
		if err := os.WriteFile(file, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		if _, err := RequirementsFromELF(file); err == nil {
			t.Error("a shell script gave requirements")
		}
	})
}

// checkGlibcRequirements checks what any glibc executable built here needs.
func checkGlibcRequirements(t *testing.T, req Requirements) {
	t.Helper()
	t.Logf("requirements: %+v", req)
	if req.Libc != LibcGlibc {
		t.Errorf("libc %q, want glibc", req.Libc)
	}
	if paths, ok := pathsByArch[runtime.GOARCH]; ok && req.Interpreter != paths.glibcLoader {
		t.Errorf("interpreter %q, want %q", req.Interpreter, paths.glibcLoader)
	}
	if req.MinGlibc == "" || !slices.Contains(req.GlibcVersions, "GLIBC_"+req.MinGlibc) {
		t.Errorf("min_glibc %q is not among %v", req.MinGlibc, req.GlibcVersions)
	}
	if !slices.IsSortedFunc(req.GlibcVersions, compareVersionNames) {
		t.Errorf("glibc versions %v are not sorted", req.GlibcVersions)
	}
	if err := req.validate(); err != nil {
		t.Errorf("requirements do not validate: %v", err)
	}
}

func TestWriteManifestThenLoadBundle(t *testing.T) {
	dir := t.TempDir()
	runner := bundleTestProgram(t, dir, true)
	want, err := RequirementsFromELF(runner)
	if err != nil {
		t.Fatal(err)
	}
	m, err := WriteManifest(dir, RunnerName, RunnerName, "1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	first, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s", first)
	var onDisk map[string]any
	if err := json.Unmarshal(first, &onDisk); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"name", "version", "entrypoint", "requires"} {
		if _, ok := onDisk[key]; !ok {
			t.Errorf("bundle.json has no %q", key)
		}
	}
	if _, err := WriteManifest(dir, RunnerName, RunnerName, "1.2.3"); err != nil {
		t.Fatal(err)
	}
	if second, _ := os.ReadFile(filepath.Join(dir, ManifestFile)); !bytes.Equal(first, second) {
		t.Errorf("a second WriteManifest changed bundle.json:\n%s\nthen\n%s", first, second)
	}

	b, err := LoadBundle(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(b.Dir) || b.RunnerPath() != runner {
		t.Errorf("Dir %q, RunnerPath %q, want absolute and %q", b.Dir, b.RunnerPath(), runner)
	}
	if b.Manifest.Name != RunnerName || b.Manifest.Version != "1.2.3" || b.Manifest.Entrypoint != RunnerName {
		t.Errorf("manifest %+v", b.Manifest)
	}
	if !equalRequirements(b.Manifest.Requires, want) || !equalRequirements(m.Requires, want) {
		t.Errorf("requirements %+v, want %+v", b.Manifest.Requires, want)
	}
}

func equalRequirements(a, b Requirements) bool {
	return a.Libc == b.Libc && a.Interpreter == b.Interpreter && a.MinGlibc == b.MinGlibc &&
		slices.Equal(a.GlibcVersions, b.GlibcVersions) && slices.Equal(a.SharedLibraries, b.SharedLibraries)
}

func TestLoadBundleRefuses(t *testing.T) {
	glibc := Requirements{Libc: LibcGlibc, Interpreter: "/lib64/ld-linux-x86-64.so.2", MinGlibc: "2.34",
		GlibcVersions: []string{"GLIBC_2.2.5", "GLIBC_2.34"}, SharedLibraries: []string{"libc.so.6"}}
	tests := []struct {
		name     string
		manifest any // nil: no bundle.json
		mode     os.FileMode
		notExist bool
	}{
		{name: "no manifest", notExist: true, mode: 0o755},
		{name: "not JSON", manifest: "{", mode: 0o755},
		{name: "runner not executable", manifest: Manifest{"stevedore-step", "1", RunnerName, glibc}, mode: 0o644},
		{name: "runner missing", manifest: Manifest{"stevedore-step", "1", "other", glibc}, mode: 0o755, notExist: true},
		{name: "entrypoint outside", manifest: Manifest{"stevedore-step", "1", "../stevedore-step", glibc}, mode: 0o755},
		{name: "no version", manifest: Manifest{"stevedore-step", "", RunnerName, glibc}, mode: 0o755},
		{name: "musl runner", manifest: Manifest{"stevedore-step", "1", RunnerName, Requirements{Libc: LibcMusl, Interpreter: "/lib/ld-musl-x86_64.so.1"}}, mode: 0o755},
		{name: "min_glibc not the highest", manifest: Manifest{"stevedore-step", "1", RunnerName, func() Requirements { r := glibc; r.MinGlibc = "2.2.5"; return r }()}, mode: 0o755},
		{name: "static with versions", manifest: Manifest{"stevedore-step", "1", RunnerName, Requirements{GlibcVersions: []string{"GLIBC_2.2.5"}}}, mode: 0o755},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, RunnerName), []byte("\x7fELF"), tt.mode); err != nil {
				t.Fatal(err)
			}
			if tt.manifest != nil {
				data := []byte(fmtAny(tt.manifest))
				if err := os.WriteFile(filepath.Join(dir, ManifestFile), data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			_, err := LoadBundle(dir)
			if !errors.Is(err, ErrInvalidBundle) {
				t.Fatalf("LoadBundle: %v, want ErrInvalidBundle", err)
			}
			if errors.Is(err, fs.ErrNotExist) != tt.notExist {
				t.Errorf("errors.Is(%v, fs.ErrNotExist) = %v, want %v", err, !tt.notExist, tt.notExist)
			}
			t.Log(err)
		})
	}
	// The same manifest with an executable runner is fine.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, RunnerName), []byte("\x7fELF"), 0o755)
	os.WriteFile(filepath.Join(dir, ManifestFile), []byte(fmtAny(Manifest{"stevedore-step", "1", RunnerName, glibc})), 0o644)
	if _, err := LoadBundle(dir); err != nil {
		t.Errorf("a valid bundle: %v", err)
	}
}

func fmtAny(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	data, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(data)
}

func TestWriteManifestRefusesWithoutWriting(t *testing.T) {
	dir := t.TempDir()
	if _, err := WriteManifest(dir, RunnerName, RunnerName, "1"); !errors.Is(err, ErrInvalidBundle) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("no runner: %v, want ErrInvalidBundle and fs.ErrNotExist", err)
	}
	if _, err := WriteManifest(dir, "../x", RunnerName, "1"); !errors.Is(err, ErrInvalidBundle) {
		t.Errorf("entrypoint outside: %v, want ErrInvalidBundle", err)
	}
	os.WriteFile(filepath.Join(dir, RunnerName), []byte("#!/bin/sh\n"), 0o755)
	if _, err := WriteManifest(dir, RunnerName, RunnerName, "1"); !errors.Is(err, ErrInvalidBundle) {
		t.Errorf("a shell script: %v, want ErrInvalidBundle", err)
	}
	if _, err := os.Stat(filepath.Join(dir, ManifestFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("bundle.json written after a refusal: %v", err)
	}
}

func TestDefaultBundleDir(t *testing.T) {
	dir, err := DefaultBundleDir()
	if err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	exe, _ = filepath.EvalSymlinks(exe)
	if want := filepath.Join(filepath.Dir(exe), "bundle"); dir != want {
		t.Errorf("DefaultBundleDir %q, want %q", dir, want)
	}
}

// runnerGlibcFloor is the oldest glibc the bundle's runner must start on
// (RHEL 7, CentOS 7, Amazon Linux 2 and newer): scripts/build-runner.sh
// links it against a sysroot for it.
const runnerGlibcFloor = "2.17"

// TestBundleRunnerGlibcFloor reads the runner ELF that the tests' bundle
// holds (built by the same script as `make build`) and checks the highest
// GLIBC_ version any of its dynamic symbols references, read from the
// symbols themselves, not from the manifest; and that the manifest says
// the same. The host-glibc bundle shows the floor comes from the sysroot.
func TestBundleRunnerGlibcFloor(t *testing.T) {
	tests := []struct {
		name      string
		dir       func(testing.TB) string
		overFloor bool
		libs      []string
	}{
		// glibc 2.31's libc6-dev: pthread_* live in libpthread.so.0.
		{"sysroot", testenv.BundleDir, false, []string{"libpthread.so.0", "libc.so.6"}},
		// Debian 12's glibc 2.36 wants __libc_start_main@GLIBC_2.34.
		{"host glibc", testenv.HostGlibcBundleDir, true, []string{"libc.so.6"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := LoadBundle(tt.dir(t))
			if err != nil {
				t.Fatal(err)
			}
			highest, by := highestGlibcSymbol(t, b.RunnerPath())
			t.Logf("%s: highest GLIBC_%s (%s), shared libraries %v", b.RunnerPath(), highest, by, b.Manifest.Requires.SharedLibraries)
			if over := CompareGlibc(highest, runnerGlibcFloor) > 0; over != tt.overFloor {
				t.Errorf("highest GLIBC_%s (%s): over the %s floor = %v, want %v", highest, by, runnerGlibcFloor, over, tt.overFloor)
			}
			if b.Manifest.Requires.MinGlibc != highest {
				t.Errorf("bundle.json min_glibc %q, the ELF's symbols need %q", b.Manifest.Requires.MinGlibc, highest)
			}
			if !slices.Equal(b.Manifest.Requires.SharedLibraries, tt.libs) {
				t.Errorf("shared libraries %v, want %v", b.Manifest.Requires.SharedLibraries, tt.libs)
			}
		})
	}
}

// highestGlibcSymbol is the highest numbered GLIBC_ version of file's
// undefined dynamic symbols (what `objdump -T` lists), and one symbol
// that needs it.
func highestGlibcSymbol(t *testing.T, file string) (version, symbol string) {
	t.Helper()
	f, err := elf.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.DynamicSymbols()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range syms {
		num, ok := strings.CutPrefix(s.Version, "GLIBC_")
		if !ok || !numericGlibc(num) || s.Section != elf.SHN_UNDEF {
			continue
		}
		if version == "" || CompareGlibc(num, version) > 0 {
			version, symbol = num, s.Name+"@"+s.Version
		}
	}
	if version == "" {
		t.Fatalf("%s references no GLIBC_ symbol versions", file)
	}
	return version, symbol
}

// TestBundleRecipeIsMakeBuild checks that `make build` builds the runner
// with the script the tests' bundle comes from, and by no other command,
// so that what the tests check is what ships.
func TestBundleRecipeIsMakeBuild(t *testing.T) {
	makeTool, err := exec.LookPath("make")
	if err != nil {
		testenv.Unavailable(t, "make: %v", err)
	}
	script := testenv.BuildRunnerScript()
	bin := t.TempDir()
	cmd := exec.Command(makeTool, "-n", "build", "BIN="+bin)
	cmd.Dir = filepath.Join(filepath.Dir(script), "..")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make -n build: %v\n%s", err, out)
	}
	runner := filepath.Join(bin, BundleDirName, RunnerName)
	var builds []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, runner) && !strings.Contains(line, "bundle manifest") {
			builds = append(builds, line)
		}
	}
	if len(builds) != 1 || !strings.Contains(builds[0], "scripts/"+filepath.Base(script)+" "+runner) {
		t.Errorf("make build makes %s with %q, want one run of scripts/%s", runner, builds, filepath.Base(script))
	}
}
