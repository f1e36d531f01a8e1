package executor

import (
	"cmp"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"stevedore/internal/fsutil"
)

// The tool bundle is a directory holding the step runner and its manifest,
// bundle.json, which says what the runner needs of an image. The manifest is
// derived from the runner's ELF by WriteManifest (`stevedore bundle manifest`,
// run by `make build`), never written by hand.
const (
	// ManifestFile is the manifest's name inside the bundle directory.
	ManifestFile = "bundle.json"
	// RunnerName is the step runner's name, and its default entrypoint.
	RunnerName = "stevedore-step"
	// BundleDirName is the bundle's directory beside the stevedore binary.
	BundleDirName = "bundle"
)

// Values of Requirements.Libc and Verdict.Libc.
const (
	LibcGlibc = "glibc"
	LibcMusl  = "musl"
	LibcNone  = "none" // no dynamic loader at all (Verdict only)
)

// ErrInvalidBundle is wrapped by LoadBundle and WriteManifest when the bundle
// directory, its manifest or its runner is unusable.
var ErrInvalidBundle = errors.New("invalid tool bundle")

// Manifest is bundle.json.
type Manifest struct {
	Name    string `json:"name"` // "stevedore-step"
	Version string `json:"version"`
	// Entrypoint is the runner's path inside the bundle directory, relative
	// and local, e.g. "stevedore-step".
	Entrypoint string       `json:"entrypoint"`
	Requires   Requirements `json:"requires"`
}

// Requirements are what the runner needs of an image to start in it.
type Requirements struct {
	// Libc is "glibc", or empty for a static runner that needs nothing.
	Libc string `json:"libc"`
	// Interpreter is the runner's PT_INTERP, e.g. /lib64/ld-linux-x86-64.so.2.
	Interpreter string `json:"interpreter"`
	// MinGlibc is the highest GLIBC_x.y version needed, e.g. "2.34".
	MinGlibc string `json:"min_glibc"`
	// GlibcVersions is every GLIBC_ version needed, from any of glibc's
	// libraries, sorted by CompareGlibc (named ones such as
	// GLIBC_ABI_DT_RELR last).
	GlibcVersions []string `json:"glibc_versions"`
	// SharedLibraries are the runner's DT_NEEDED entries, in ELF order.
	SharedLibraries []string `json:"shared_libraries"`
}

// Bundle is a loaded, validated tool bundle.
type Bundle struct {
	Dir      string // absolute
	Manifest Manifest
}

// LoadBundle reads and validates dir/bundle.json and checks that the
// entrypoint it names is an executable regular file in dir. It only reads.
// Errors wrap ErrInvalidBundle, and fs.ErrNotExist when the manifest is missing.
func LoadBundle(dir string) (*Bundle, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalidBundle, dir, err)
	}
	file := filepath.Join(abs, ManifestFile)
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%w: %w (build the bundle with `make build`, or write its manifest with `stevedore bundle manifest %s`)", ErrInvalidBundle, err, abs)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalidBundle, file, err)
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalidBundle, file, err)
	}
	if err := checkRunner(filepath.Join(abs, filepath.FromSlash(m.Entrypoint))); err != nil {
		return nil, err
	}
	return &Bundle{Dir: abs, Manifest: m}, nil
}

// RunnerPath is the runner's absolute path on this machine.
func (b *Bundle) RunnerPath() string {
	return filepath.Join(b.Dir, filepath.FromSlash(b.Manifest.Entrypoint))
}

// DefaultBundleDir is where the agent looks for the bundle unless told:
// the directory "bundle" beside the running stevedore binary, after
// resolving symbolic links to the binary (so a symlink in /usr/local/bin
// finds the bundle beside the real file). It only reads.
func DefaultBundleDir() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("locate the stevedore binary: %w", err)
	}
	if real, err := filepath.EvalSymlinks(exe); err == nil {
		exe = real
	}
	return filepath.Join(filepath.Dir(exe), BundleDirName), nil
}

// WriteManifest derives the manifest from the ELF at dir/entrypoint and
// writes it to dir/bundle.json atomically (indented JSON, mode 0644).
// Idempotent: the same runner gives the same bytes. A runner LoadBundle
// would refuse (musl-linked, not executable) is refused before anything is
// written; such errors wrap ErrInvalidBundle.
func WriteManifest(dir, entrypoint, name, version string) (*Manifest, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalidBundle, dir, err)
	}
	m := Manifest{Name: name, Version: version, Entrypoint: filepath.ToSlash(entrypoint)}
	if err := m.validateNames(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidBundle, err)
	}
	runner := filepath.Join(abs, filepath.FromSlash(m.Entrypoint))
	if err := checkRunner(runner); err != nil {
		return nil, err
	}
	if m.Requires, err = RequirementsFromELF(runner); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidBundle, err)
	}
	if err := m.Requires.validate(); err != nil {
		return nil, fmt.Errorf("%w: runner %s: %w", ErrInvalidBundle, runner, err)
	}
	// Lists as [], never null, so the file reads the same for every runner.
	m.Requires.GlibcVersions = append([]string{}, m.Requires.GlibcVersions...)
	m.Requires.SharedLibraries = append([]string{}, m.Requires.SharedLibraries...)
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := fsutil.WriteFileAtomic(filepath.Join(abs, ManifestFile), append(data, '\n'), 0o644); err != nil {
		return nil, err
	}
	return &m, nil
}

// checkRunner makes sure the runner is an executable regular file.
func checkRunner(file string) error {
	st, err := os.Stat(file)
	if err != nil {
		return fmt.Errorf("%w: runner: %w", ErrInvalidBundle, err)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%w: runner %s is not an executable file (mode %v)", ErrInvalidBundle, file, st.Mode())
	}
	return nil
}

func (m *Manifest) validate() error {
	if err := m.validateNames(); err != nil {
		return err
	}
	return m.Requires.validate()
}

func (m *Manifest) validateNames() error {
	switch {
	case m.Name == "":
		return errors.New("no name")
	case m.Version == "":
		return errors.New("no version")
	case m.Entrypoint == "":
		return errors.New("no entrypoint")
	case !filepath.IsLocal(filepath.FromSlash(m.Entrypoint)) || path.Clean(m.Entrypoint) != m.Entrypoint:
		return fmt.Errorf("entrypoint %q is not a clean path inside the bundle directory", m.Entrypoint)
	}
	return nil
}

// validate checks that the requirements are ones the probe can verify and
// that they agree with each other.
func (r *Requirements) validate() error {
	switch r.Libc {
	case "":
		if r.Interpreter != "" || r.MinGlibc != "" || len(r.GlibcVersions) > 0 || len(r.SharedLibraries) > 0 {
			return errors.New("requires no libc but names an interpreter, glibc versions or shared libraries")
		}
		return nil
	case LibcGlibc:
	case LibcMusl:
		return fmt.Errorf("the runner is linked against musl (interpreter %s); stevedore only probes images for glibc: build the runner on a glibc system with CGO_ENABLED=1, or statically", r.Interpreter)
	default:
		return fmt.Errorf("unknown libc %q (want %q, or none for a static runner)", r.Libc, LibcGlibc)
	}
	if !path.IsAbs(r.Interpreter) {
		return fmt.Errorf("interpreter %q is not an absolute path", r.Interpreter)
	}
	highest := ""
	for _, v := range r.GlibcVersions {
		num, ok := strings.CutPrefix(v, "GLIBC_")
		if !ok || num == "" {
			return fmt.Errorf("glibc version %q does not start with GLIBC_", v)
		}
		if numericGlibc(num) && (highest == "" || CompareGlibc(num, highest) > 0) {
			highest = num
		}
	}
	if r.MinGlibc != highest {
		return fmt.Errorf("min_glibc %q is not the highest of glibc_versions (%q)", r.MinGlibc, highest)
	}
	return nil
}

// RequirementsFromELF reads what the executable at file needs of an image:
// its PT_INTERP, its DT_NEEDED libraries and every GLIBC_ symbol version it
// needs. A static executable (no interpreter, no libraries) needs nothing
// and gets zero Requirements. A musl-linked one gets Libc "musl", which
// WriteManifest refuses. It only reads.
func RequirementsFromELF(file string) (Requirements, error) {
	f, err := elf.Open(file)
	if err != nil {
		return Requirements{}, fmt.Errorf("read ELF %s: %w", file, err)
	}
	defer f.Close()
	var req Requirements
	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		data, err := io.ReadAll(io.LimitReader(p.Open(), 4096))
		if err != nil {
			return Requirements{}, fmt.Errorf("read ELF %s: PT_INTERP: %w", file, err)
		}
		req.Interpreter = strings.TrimRight(string(data), "\x00")
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		return Requirements{}, fmt.Errorf("read ELF %s: DT_NEEDED: %w", file, err)
	}
	switch {
	case req.Interpreter == "" && len(libs) == 0:
		return Requirements{}, nil // static
	case req.Interpreter == "":
		return Requirements{}, fmt.Errorf("ELF %s needs shared libraries but has no interpreter: a shared object, not an executable", file)
	}
	req.SharedLibraries = libs
	versions := map[string]bool{}
	if f.SectionByType(elf.SHT_GNU_VERSYM) != nil {
		needs, err := f.DynamicVersionNeeds()
		if err != nil {
			return Requirements{}, fmt.Errorf("read ELF %s: version needs: %w", file, err)
		}
		for _, n := range needs {
			for _, d := range n.Needs {
				if strings.HasPrefix(d.Dep, "GLIBC_") {
					versions[d.Dep] = true
				}
			}
		}
	}
	if strings.Contains(path.Base(req.Interpreter), "ld-musl") {
		req.Libc = LibcMusl
		return req, nil
	}
	req.Libc = LibcGlibc
	for v := range versions {
		req.GlibcVersions = append(req.GlibcVersions, v)
	}
	slices.SortFunc(req.GlibcVersions, compareVersionNames)
	for _, v := range req.GlibcVersions {
		if num := strings.TrimPrefix(v, "GLIBC_"); numericGlibc(num) {
			req.MinGlibc = num // sorted: the last numeric one is the highest
		}
	}
	return req, nil
}

// compareVersionNames orders GLIBC_ version names numerically, named ones
// (GLIBC_ABI_DT_RELR, GLIBC_PRIVATE) after all numbered ones.
func compareVersionNames(a, b string) int {
	na, nb := strings.TrimPrefix(a, "GLIBC_"), strings.TrimPrefix(b, "GLIBC_")
	switch an, bn := numericGlibc(na), numericGlibc(nb); {
	case an && bn:
		return CompareGlibc(na, nb)
	case an:
		return -1
	case bn:
		return 1
	}
	return strings.Compare(a, b)
}

// numericGlibc reports whether v is a dotted run of decimal numbers, "2.34".
func numericGlibc(v string) bool {
	if v == "" {
		return false
	}
	for _, part := range strings.Split(v, ".") {
		if _, err := strconv.ParseUint(part, 10, 32); err != nil {
			return false
		}
	}
	return true
}

// CompareGlibc compares glibc versions numerically, component by component:
// 2.9 < 2.10 < 2.34 = 2.34.0. A "GLIBC_" prefix is ignored. A component that
// is not a number sorts after numbers, and such components sort as strings.
// It returns -1, 0 or +1.
func CompareGlibc(a, b string) int {
	pa := strings.Split(strings.TrimPrefix(a, "GLIBC_"), ".")
	pb := strings.Split(strings.TrimPrefix(b, "GLIBC_"), ".")
	for i := 0; i < max(len(pa), len(pb)); i++ {
		ca, cb := "0", "0"
		if i < len(pa) {
			ca = pa[i]
		}
		if i < len(pb) {
			cb = pb[i]
		}
		na, ea := strconv.ParseUint(ca, 10, 64)
		nb, eb := strconv.ParseUint(cb, 10, 64)
		var c int
		switch {
		case ea == nil && eb == nil:
			c = cmp.Compare(na, nb)
		case ea == nil:
			c = -1
		case eb == nil:
			c = 1
		default:
			c = strings.Compare(ca, cb)
		}
		if c != 0 {
			return c
		}
	}
	return 0
}

// Key names these requirements compactly, so that a stored verdict is
// reused only for the requirements it was made against.
func (r Requirements) Key() string {
	b, _ := json.Marshal(r)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}
