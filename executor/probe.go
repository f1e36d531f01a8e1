package executor

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"
)

// The probe decides, before anything of a user's image runs, whether the
// bundle's runner can start in it. It reads files of a created, never
// started container through the engine's archive API (as Nomad's docker
// driver does): the dynamic loaders, libc.so.6 and /etc/os-release.

// ProbeAPI is the part of the Docker client the probe needs. Both calls only
// read a container's file system; nothing in the container runs.
// *client.Client implements it.
type ProbeAPI interface {
	ContainerStatPath(ctx context.Context, containerID, path string) (container.PathStat, error)
	CopyFromContainer(ctx context.Context, containerID, srcPath string) (io.ReadCloser, container.PathStat, error)
}

var _ ProbeAPI = (*client.Client)(nil)

// ErrImageRejected is matched (errors.Is) by every *RejectedError: the image
// cannot run the step runner, and retrying will not change that.
var ErrImageRejected = errors.New("image rejected")

const (
	// maxLibcSize bounds what the probe reads of an image's libc.so.6 into
	// memory (glibc's is about 2 MB).
	maxLibcSize = 32 << 20
	// maxOSReleaseSize bounds /etc/os-release.
	maxOSReleaseSize = 64 << 10
	// maxLinkHops bounds the symbolic links followed for one path.
	maxLinkHops = 16
)

// errTooLarge: a file the probe reads is over its bound.
var errTooLarge = errors.New("file too large")

// probePaths are where a libc puts its loader and glibc its libc.so.6 on
// one architecture.
type probePaths struct {
	glibcLoader, muslLoader string
	libc                    []string // candidates for glibc's libc.so.6, in order
}

var pathsByArch = map[string]probePaths{
	"amd64": {
		glibcLoader: "/lib64/ld-linux-x86-64.so.2",
		muslLoader:  "/lib/ld-musl-x86_64.so.1",
		libc: []string{
			"/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6", // Debian, Ubuntu
			"/lib64/libc.so.6", "/usr/lib64/libc.so.6", // Fedora, RHEL, SUSE
			"/lib/libc.so.6", "/usr/lib/libc.so.6", // Arch and others
		},
	},
	"arm64": {
		glibcLoader: "/lib/ld-linux-aarch64.so.1",
		muslLoader:  "/lib/ld-musl-aarch64.so.1",
		libc: []string{
			"/lib/aarch64-linux-gnu/libc.so.6", "/usr/lib/aarch64-linux-gnu/libc.so.6",
			"/lib64/libc.so.6", "/usr/lib64/libc.so.6",
			"/lib/libc.so.6", "/usr/lib/libc.so.6",
		},
	},
}

// pathsFor returns the paths to probe on this architecture. The glibc
// loader is the runner's own interpreter when it has one, since that is the
// file the kernel will look for.
func pathsFor(req Requirements) (probePaths, error) {
	p, ok := pathsByArch[runtime.GOARCH]
	if !ok {
		return probePaths{}, fmt.Errorf("probe: no loader paths known for %s", runtime.GOARCH)
	}
	if req.Interpreter != "" {
		p.glibcLoader = req.Interpreter
	}
	return p, nil
}

// Verdict is what the probe found in an image.
type Verdict struct {
	// Libc is LibcGlibc, LibcMusl or LibcNone (no dynamic loader at all).
	Libc string
	// Loader is the loader path found, e.g. /lib/ld-musl-x86_64.so.1; empty
	// for LibcNone.
	Loader string
	// LibcPath is the libc.so.6 the glibc version was read from, e.g.
	// /lib/x86_64-linux-gnu/libc.so.6 (glibc only).
	LibcPath string
	// GlibcVersion is the image's glibc release, e.g. "2.36": the one
	// libc.so.6's banner names, or the highest GLIBC_x.y it defines when
	// that is higher or there is no banner. (The highest defined alone can
	// be older than the release: glibc 2.31's libc.so.6 defines nothing
	// newer than GLIBC_2.30.) Empty when unknown, and Detail then says why.
	GlibcVersion string
	// Missing are the GLIBC_ versions the runner needs that the image's
	// glibc lacks (for the Requirements the probe was given).
	Missing []string
	// Detail says why a glibc image has no GlibcVersion, as a clause:
	// "its libc.so.6 (/lib/libc.so.6) defines no GLIBC_ versions".
	Detail string
	// OSID and OSName are ID and PRETTY_NAME of the image's
	// /etc/os-release, when it has one ("alpine", "Alpine Linux v3.20").
	OSID, OSName string
}

// Probe inspects the created, never started container containerID and says
// which libc its image has and whether its glibc defines every version req
// needs. It only reads the container's files, through api.
//
// A usable glibc loader (the runner's interpreter, or the architecture's
// glibc loader) makes the image glibc even when musl's loader is there too,
// as on a Debian image with the musl package; musl wins only without one,
// or when the glibc loader's name leads to musl's loader (Alpine's gcompat).
// Symbolic links are followed, each hop through the engine, and a dangling
// link counts as absent.
//
// The error is for failures to probe (the engine, the context); anything
// about the image is in the Verdict, for Check to judge. Probe only reads,
// so it is safe to repeat and to run concurrently; libc.so.6 is held in
// memory only while parsed, and never more than 32 MiB of it.
func Probe(ctx context.Context, api ProbeAPI, containerID string, req Requirements) (Verdict, error) {
	paths, err := pathsFor(req)
	if err != nil {
		return Verdict{}, err
	}
	p := &prober{ctx: ctx, api: api, id: containerID}
	glibc, err := p.resolve(paths.glibcLoader)
	if err != nil {
		return Verdict{}, err
	}
	musl, err := p.resolve(paths.muslLoader)
	if err != nil {
		return Verdict{}, err
	}
	var v Verdict
	switch {
	case glibc != "" && !isMuslLoader(glibc):
		v.Libc, v.Loader = LibcGlibc, paths.glibcLoader
	case musl != "":
		v.Libc, v.Loader = LibcMusl, paths.muslLoader
	case glibc != "":
		v.Libc, v.Loader = LibcMusl, paths.glibcLoader
	default:
		v.Libc = LibcNone
	}
	v.OSID, v.OSName = p.osRelease()
	if v.Libc == LibcGlibc {
		if err := p.glibc(&v, paths.libc, req.GlibcVersions); err != nil {
			return Verdict{}, err
		}
	}
	if err := ctx.Err(); err != nil {
		return Verdict{}, err // the best-effort reads may have swallowed it
	}
	return v, nil
}

func isMuslLoader(file string) bool { return strings.HasPrefix(path.Base(file), "ld-musl-") }

// prober reads files of one container.
type prober struct {
	ctx context.Context
	api ProbeAPI
	id  string
}

// resolve follows symbolic links from name and returns the regular file
// they lead to, or "" when there is none (missing, dangling, a directory).
// The engine resolves links in the directories of a path itself and gives
// a link's target fully resolved, but each hop is checked again here.
func (p *prober) resolve(name string) (string, error) {
	orig := name
	for range maxLinkHops {
		st, err := p.api.ContainerStatPath(p.ctx, p.id, name)
		if errdefs.IsNotFound(err) {
			return "", nil
		}
		if err != nil {
			return "", fmt.Errorf("probe: stat %s: %w", name, err)
		}
		if st.Mode&os.ModeSymlink == 0 {
			if st.Mode.IsRegular() {
				return name, nil
			}
			return "", nil
		}
		if st.LinkTarget == "" {
			return "", fmt.Errorf("probe: stat %s: a symbolic link without a target", name)
		}
		name = joinLink(name, st.LinkTarget)
	}
	return "", fmt.Errorf("probe: %s: too many levels of symbolic links", orig)
}

// joinLink is where link target leads from the link at name.
func joinLink(name, target string) string {
	if path.IsAbs(target) {
		return path.Clean(target)
	}
	return path.Join(path.Dir(name), target)
}

// readFile returns the content of the regular file name leads to, at most
// limit bytes (errTooLarge beyond), fs.ErrNotExist when there is none.
func (p *prober) readFile(name string, limit int64) ([]byte, error) {
	orig := name
	for range maxLinkHops {
		real, err := p.resolve(name)
		if err != nil {
			return nil, err
		}
		if real == "" {
			return nil, fmt.Errorf("probe: %s: %w", orig, fs.ErrNotExist)
		}
		data, link, err := p.copyOut(real, limit)
		if err != nil || link == "" {
			return data, err
		}
		name = link // replaced by a link since the stat: follow it
	}
	return nil, fmt.Errorf("probe: %s: too many levels of symbolic links", orig)
}

// copyOut reads the file name from the container's archive: its content,
// or the target of a symbolic link.
func (p *prober) copyOut(name string, limit int64) (data []byte, link string, err error) {
	rc, st, err := p.api.CopyFromContainer(p.ctx, p.id, name)
	if errdefs.IsNotFound(err) {
		return nil, "", fmt.Errorf("probe: %s: %w", name, fs.ErrNotExist)
	}
	if err != nil {
		return nil, "", fmt.Errorf("probe: copy %s: %w", name, err)
	}
	defer rc.Close()
	if st.Mode.IsRegular() && st.Size > limit {
		return nil, "", fmt.Errorf("probe: %s is %d bytes: %w", name, st.Size, errTooLarge)
	}
	tr := tar.NewReader(rc)
	hdr, err := tr.Next()
	if err != nil {
		return nil, "", fmt.Errorf("probe: copy %s: archive: %w", name, err)
	}
	switch hdr.Typeflag {
	case tar.TypeReg:
		if hdr.Size > limit {
			return nil, "", fmt.Errorf("probe: %s is %d bytes: %w", name, hdr.Size, errTooLarge)
		}
		data, err := io.ReadAll(io.LimitReader(tr, limit+1))
		if err != nil {
			return nil, "", fmt.Errorf("probe: copy %s: archive: %w", name, err)
		}
		if int64(len(data)) > limit {
			return nil, "", fmt.Errorf("probe: %s is over %d bytes: %w", name, limit, errTooLarge)
		}
		return data, "", nil
	case tar.TypeSymlink:
		return nil, joinLink(name, hdr.Linkname), nil
	}
	return nil, "", fmt.Errorf("probe: %s is not a regular file (archive entry type %q)", name, hdr.Typeflag)
}

// osRelease returns ID and PRETTY_NAME of the image's os-release, best
// effort: "" when it has none or it cannot be read.
func (p *prober) osRelease() (id, name string) {
	for _, file := range []string{"/etc/os-release", "/usr/lib/os-release"} {
		data, err := p.readFile(file, maxOSReleaseSize)
		if err == nil {
			return parseOSRelease(data)
		}
	}
	return "", ""
}

// osReleaseUnescape undoes the shell escapes os-release(5) allows in quotes.
var osReleaseUnescape = strings.NewReplacer(`\"`, `"`, `\\`, `\`, `\$`, `$`, "\\`", "`")

// parseOSRelease reads ID and PRETTY_NAME of an os-release(5) file.
func parseOSRelease(data []byte) (id, name string) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		key, val, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok {
			continue
		}
		if len(val) >= 2 && (val[0] == '"' || val[0] == '\'') && val[len(val)-1] == val[0] {
			val = osReleaseUnescape.Replace(val[1 : len(val)-1])
		}
		switch key {
		case "ID":
			id = val
		case "PRETTY_NAME":
			name = val
		}
	}
	return id, name
}

// glibc finds the image's libc.so.6 among candidates and fills in the
// glibc fields of v: its version, or Detail saying why there is none.
func (p *prober) glibc(v *Verdict, candidates, needed []string) error {
	for _, c := range candidates {
		real, err := p.resolve(c)
		if err != nil {
			return err
		}
		if real == "" {
			continue
		}
		v.LibcPath = c
		data, err := p.readFile(real, maxLibcSize)
		switch {
		case errors.Is(err, errTooLarge):
			v.Detail = fmt.Sprintf("its libc.so.6 (%s) is larger than %d MiB, far more than glibc's", c, maxLibcSize>>20)
			return nil
		case err != nil:
			return err
		}
		defined, highest, err := glibcDefinitions(data)
		switch {
		case err != nil:
			v.Detail = fmt.Sprintf("its libc.so.6 (%s) is not a readable ELF shared object (%v)", c, err)
		case highest == "":
			v.Detail = fmt.Sprintf("its libc.so.6 (%s) defines no GLIBC_ versions, so it is not glibc's", c)
		default:
			v.GlibcVersion = highest
			if release := glibcRelease(data); release != "" && CompareGlibc(release, highest) > 0 {
				v.GlibcVersion = release
			}
			v.Missing = missingVersions(needed, defined, v.GlibcVersion)
		}
		return nil
	}
	v.Detail = "no libc.so.6 (looked for " + strings.Join(candidates, ", ") + ")"
	return nil
}

// glibcDefinitions parses the ELF version definitions of a libc.so.6: the
// GLIBC_ versions it defines and the highest numbered one. Only a file with
// GLIBC_ definitions is taken for glibc's.
func glibcDefinitions(data []byte) (defined map[string]bool, highest string, err error) {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, "", err
	}
	defer f.Close()
	vers, err := f.DynamicVersions()
	if err != nil {
		return nil, "", err
	}
	defined = map[string]bool{}
	for _, d := range vers {
		num, ok := strings.CutPrefix(d.Name, "GLIBC_")
		if !ok {
			continue
		}
		defined[d.Name] = true
		if numericGlibc(num) && (highest == "" || CompareGlibc(num, highest) > 0) {
			highest = num
		}
	}
	return defined, highest, nil
}

// glibcBanner precedes the release in the banner every libc.so.6 carries
// (and prints when run): "GNU C Library (Debian GLIBC 2.31-13+deb11u11)
// stable release version 2.31."
var glibcBanner = []byte(" release version ")

// glibcRelease returns the release named by libc.so.6's banner, "" when it
// has none.
func glibcRelease(data []byte) string {
	for rest := data; ; {
		i := bytes.Index(rest, glibcBanner)
		if i < 0 {
			return ""
		}
		rest = rest[i+len(glibcBanner):]
		end := 0
		for end < len(rest) && end < 16 && (rest[end] == '.' || rest[end] >= '0' && rest[end] <= '9') {
			end++
		}
		if v := strings.TrimRight(string(rest[:end]), "."); numericGlibc(v) {
			return v
		}
	}
}

// missingVersions are the needed versions the image's glibc lacks. A
// numbered version that libc.so.6 does not define but that is not newer than
// its release belongs to another library of that release, so it is there:
// glibc 2.31's libpthread defines GLIBC_2.31, its libc.so.6 does not.
func missingVersions(needed []string, defined map[string]bool, highest string) []string {
	var missing []string
	for _, n := range needed {
		if defined[n] {
			continue
		}
		if num := strings.TrimPrefix(n, "GLIBC_"); numericGlibc(num) && CompareGlibc(num, highest) <= 0 {
			continue
		}
		missing = append(missing, n)
	}
	return missing
}

// Check judges the verdict against what the runner needs: nil when it can
// start in the image, else a *RejectedError (errors.Is ErrImageRejected)
// whose message says what was found and what to use instead. Missing is
// taken as computed by Probe for the same req. A static runner (req.Libc
// empty) fits every image.
func (v Verdict) Check(image string, req Requirements) error {
	if req.Libc == "" {
		return nil
	}
	if v.Libc == LibcGlibc && v.GlibcVersion != "" && len(v.Missing) == 0 &&
		(req.MinGlibc == "" || CompareGlibc(v.GlibcVersion, req.MinGlibc) >= 0) {
		return nil
	}
	return &RejectedError{Image: image, Verdict: v, Required: req}
}

// RejectedError says why an image cannot run the step runner. It matches
// ErrImageRejected. Its message is for operators: what the probe found and
// which image to use instead.
type RejectedError struct {
	Image    string
	Verdict  Verdict
	Required Requirements
}

func (e *RejectedError) Error() string { return rejectReason(e.Image, e.Verdict, e.Required) }

// Is makes errors.Is(err, ErrImageRejected) true.
func (e *RejectedError) Is(target error) bool { return target == ErrImageRejected }

const runnerNeeds = "stevedore's step runner needs "

// rejectReason builds RejectedError's message.
func rejectReason(image string, v Verdict, req Requirements) string {
	needs := "glibc"
	if req.MinGlibc != "" {
		needs = "glibc " + req.MinGlibc + " or newer"
	}
	says := ""
	if v.OSID != "" {
		says = "; /etc/os-release says ID=" + v.OSID
	}
	switch v.Libc {
	case LibcMusl:
		instead := "a musl-based image"
		switch {
		case v.OSID == "alpine":
			instead = "Alpine"
		case v.OSName != "":
			instead = v.OSName
		}
		return fmt.Sprintf("image %s uses musl libc (found %s%s): %s%s; use a glibc-based image, e.g. Debian or Ubuntu (debian:bookworm-slim), instead of %s",
			image, v.Loader, says, runnerNeeds, needs, instead)
	case LibcNone:
		looked := "the glibc and musl loaders"
		if paths, err := pathsFor(req); err == nil {
			looked = paths.glibcLoader + " and " + paths.muslLoader
		}
		return fmt.Sprintf("image %s has no dynamic loader (looked for %s%s): it looks like a static or distroless image; %s%s and its loader in the image; use a glibc-based image, e.g. debian:bookworm-slim, or a distroless base image rather than a static one",
			image, looked, says, runnerNeeds, needs)
	case LibcGlibc:
		if v.GlibcVersion == "" {
			detail := v.Detail
			if detail == "" {
				detail = "no glibc version the probe could read"
			}
			return fmt.Sprintf("image %s has glibc's loader %s but %s; %s%s; use a complete glibc-based image, e.g. debian:bookworm-slim",
				image, v.Loader, detail, runnerNeeds, needs)
		}
		if req.MinGlibc != "" && CompareGlibc(v.GlibcVersion, req.MinGlibc) < 0 {
			missing := ""
			if len(v.Missing) > 0 {
				missing = " (" + strings.Join(v.Missing, ", ") + " missing)"
			}
			return fmt.Sprintf("image %s has glibc %s, but %sglibc %s%s; use %s",
				image, v.GlibcVersion, runnerNeeds, req.MinGlibc, missing, suggestImage(req.MinGlibc, false))
		}
		return fmt.Sprintf("image %s has glibc %s, which lacks %s that %s; use %s",
			image, v.GlibcVersion, strings.Join(v.Missing, ", "), strings.TrimSuffix(runnerNeeds, " "), suggestImage(v.GlibcVersion, true))
	}
	return fmt.Sprintf("image %s: the probe found no libc it knows (%q); %s%s; use a glibc-based image, e.g. debian:bookworm-slim", image, v.Libc, runnerNeeds, needs)
}

// glibcReleases are the glibc versions of the images operators know, oldest
// first per distribution.
var glibcReleases = []struct{ distro, release, glibc string }{
	{"Debian", "10", "2.28"}, {"Debian", "11", "2.31"}, {"Debian", "12", "2.36"}, {"Debian", "13", "2.41"},
	{"Ubuntu", "18.04", "2.27"}, {"Ubuntu", "20.04", "2.31"}, {"Ubuntu", "22.04", "2.35"}, {"Ubuntu", "24.04", "2.39"},
}

// suggestImage names the oldest Debian and Ubuntu releases whose glibc is at
// least version (newer than it, when newer), as "an image based on Debian 12,
// Ubuntu 22.04 or newer".
func suggestImage(version string, newer bool) string {
	var names []string
	seen := map[string]bool{}
	for _, r := range glibcReleases {
		c := CompareGlibc(r.glibc, version)
		if seen[r.distro] || c < 0 || (newer && c == 0) {
			continue
		}
		seen[r.distro] = true
		names = append(names, r.distro+" "+r.release)
	}
	if len(names) == 0 {
		if newer {
			return "an image with a glibc newer than " + version
		}
		return "an image with glibc " + version + " or newer"
	}
	return "an image based on " + strings.Join(names, ", ") + " or newer"
}

// Summary describes the verdict in a line for the step's log, e.g.
// "glibc 2.36 (/lib64/ld-linux-x86-64.so.2, Debian GNU/Linux 12 (bookworm))".
func (v Verdict) Summary() string {
	var what string
	switch {
	case v.Libc == LibcGlibc && v.GlibcVersion != "":
		what = "glibc " + v.GlibcVersion
	case v.Libc == LibcGlibc:
		what = "glibc of unknown version"
	case v.Libc == LibcMusl:
		what = "musl libc"
	case v.Libc == LibcNone:
		what = "no dynamic loader"
	default:
		what = "libc " + v.Libc
	}
	var about []string
	if v.Loader != "" {
		about = append(about, v.Loader)
	}
	if v.OSName != "" {
		about = append(about, v.OSName)
	} else if v.OSID != "" {
		about = append(about, "ID="+v.OSID)
	}
	if len(about) > 0 {
		what += " (" + strings.Join(about, ", ") + ")"
	}
	if len(v.Missing) > 0 {
		what += ", lacks " + strings.Join(v.Missing, ", ")
	}
	return what
}

// maxCachedVerdicts bounds a ProbeCache; past it an arbitrary entry goes.
const maxCachedVerdicts = 4096

// ProbeCache remembers verdicts by image ID (sha256:…, which names
// immutable content, so a verdict never goes stale). It serves one
// bundle's Requirements: Verdict.Missing depends on them. Safe for
// concurrent use; the zero value is ready.
type ProbeCache struct {
	mu sync.Mutex
	m  map[string]Verdict
}

// NewProbeCache returns an empty cache.
func NewProbeCache() *ProbeCache { return &ProbeCache{} }

// Get returns the verdict for imageID, if one was Put.
func (c *ProbeCache) Get(imageID string) (Verdict, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.m[imageID]
	v.Missing = slices.Clone(v.Missing)
	return v, ok
}

// Put records the verdict for imageID, replacing any; an empty imageID is
// ignored.
func (c *ProbeCache) Put(imageID string, v Verdict) {
	if imageID == "" {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]Verdict{}
	}
	if _, ok := c.m[imageID]; !ok && len(c.m) >= maxCachedVerdicts {
		for k := range c.m {
			delete(c.m, k)
			break
		}
	}
	v.Missing = slices.Clone(v.Missing)
	c.m[imageID] = v
}
