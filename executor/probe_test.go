package executor

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"

	"stevedore/internal/testenv"
)

// probeFakeFS is a container's file system behind a fake ProbeAPI that
// answers as the engine does: links in the directories of a path are
// resolved, the last component is not; a link's stat gives its target fully
// resolved (even when dangling) and its archive a symlink entry.
type probeFakeFS struct {
	files map[string][]byte
	links map[string]string // raw targets, relative or absolute
	// sizes override the size stat reports (a file too large to build).
	sizes map[string]int64
	// racy are files whose archive entry is a link to the target given,
	// though stat said a regular file: replaced between the two calls.
	racy map[string]string
	// fail makes stat of a path fail as an engine error would.
	fail map[string]error
}

var errFakeLoop = errors.New("fake engine: too many levels of symbolic links (500)")

// walk resolves the links in p, the last component's only if followLast.
func (f *probeFakeFS) walk(p string, followLast bool, depth int) (string, error) {
	if depth > 40 {
		return "", errFakeLoop
	}
	parts := strings.Split(strings.TrimPrefix(path.Clean(p), "/"), "/")
	cur := "/"
	for i, part := range parts {
		next := path.Join(cur, part)
		if t, ok := f.links[next]; ok && (i < len(parts)-1 || followLast) {
			r, err := f.walk(joinLink(next, t), true, depth+1)
			if err != nil {
				return "", err
			}
			next = r
		}
		cur = next
	}
	return cur, nil
}

func (f *probeFakeFS) isDir(p string) bool {
	for _, m := range []map[string][]byte{f.files} {
		for k := range m {
			if p == "/" || strings.HasPrefix(k, p+"/") {
				return true
			}
		}
	}
	for k := range f.links {
		if strings.HasPrefix(k, p+"/") {
			return true
		}
	}
	return false
}

func (f *probeFakeFS) ContainerStatPath(ctx context.Context, _, p string) (container.PathStat, error) {
	if err := ctx.Err(); err != nil {
		return container.PathStat{}, err
	}
	if err := f.fail[p]; err != nil {
		return container.PathStat{}, err
	}
	q, err := f.walk(p, false, 0)
	if err != nil {
		return container.PathStat{}, err
	}
	if t, ok := f.links[q]; ok {
		target, err := f.walk(joinLink(q, t), true, 0)
		if err != nil {
			return container.PathStat{}, err
		}
		return container.PathStat{Name: path.Base(q), Size: int64(len(t)), Mode: os.ModeSymlink | 0o777, LinkTarget: target}, nil
	}
	if data, ok := f.files[q]; ok {
		size, ok := f.sizes[q]
		if !ok {
			size = int64(len(data))
		}
		return container.PathStat{Name: path.Base(q), Size: size, Mode: 0o755}, nil
	}
	if f.isDir(q) {
		return container.PathStat{Name: path.Base(q), Size: 4096, Mode: os.ModeDir | 0o755}, nil
	}
	return container.PathStat{}, fmt.Errorf("fake engine: %s: %w", p, errdefs.ErrNotFound)
}

func (f *probeFakeFS) CopyFromContainer(ctx context.Context, id, p string) (io.ReadCloser, container.PathStat, error) {
	st, err := f.ContainerStatPath(ctx, id, p)
	if err != nil {
		return nil, st, err
	}
	q, _ := f.walk(p, false, 0)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	link, isLink := f.links[q]
	if racy, ok := f.racy[q]; ok {
		link, isLink = racy, true
	}
	switch {
	case isLink:
		err = tw.WriteHeader(&tar.Header{Name: path.Base(q), Typeflag: tar.TypeSymlink, Linkname: link, Mode: 0o777})
	case st.Mode.IsRegular():
		data := f.files[q]
		if err = tw.WriteHeader(&tar.Header{Name: path.Base(q), Typeflag: tar.TypeReg, Size: int64(len(data)), Mode: 0o755}); err == nil {
			_, err = tw.Write(data)
		}
	default:
		return nil, st, fmt.Errorf("fake engine: the probe copies no directory (%s)", p)
	}
	if err == nil {
		err = tw.Close()
	}
	if err != nil {
		return nil, st, err
	}
	return io.NopCloser(&buf), st, nil
}

// probeFakeLibc builds a minimal ELF shared object whose version
// definitions are libc.so.6's base version and versions, enough for
// (*elf.File).DynamicVersions, with glibc's banner for release unless empty.
func probeFakeLibc(release string, versions ...string) []byte {
	le := binary.LittleEndian
	dynstr := []byte{0}
	str := func(s string) uint32 {
		off := len(dynstr)
		dynstr = append(append(dynstr, s...), 0)
		return uint32(off)
	}
	names := append([]string{"libc.so.6"}, versions...)
	var verdef []byte
	for i, n := range names {
		e := make([]byte, 28)  // Elf64_Verdef (20) + one Elf64_Verdaux (8)
		le.PutUint16(e[0:], 1) // vd_version
		if i == 0 {
			le.PutUint16(e[2:], uint16(elf.VER_FLG_BASE))
		}
		le.PutUint16(e[4:], uint16(i+1)) // vd_ndx
		le.PutUint16(e[6:], 1)           // vd_cnt
		le.PutUint32(e[12:], 20)         // vd_aux
		if i < len(names)-1 {
			le.PutUint32(e[16:], 28) // vd_next
		}
		le.PutUint32(e[20:], str(n)) // vda_name
		verdef = append(verdef, e...)
	}
	type section struct {
		name       string
		typ        elf.SectionType
		link, info uint32
		entsize    uint64
		data       []byte
	}
	sections := []section{
		{name: ""},
		{name: ".dynstr", typ: elf.SHT_STRTAB, data: dynstr},
		{name: ".dynsym", typ: elf.SHT_DYNSYM, link: 1, info: 1, entsize: 24, data: make([]byte, 24)},
		{name: ".gnu.version", typ: elf.SHT_GNU_VERSYM, link: 2, entsize: 2, data: make([]byte, 2)},
		{name: ".gnu.version_d", typ: elf.SHT_GNU_VERDEF, link: 1, info: uint32(len(names)), data: verdef},
		{name: ".shstrtab", typ: elf.SHT_STRTAB},
	}
	if release != "" {
		banner := "GNU C Library (fake GLIBC " + release + "-1) stable release version " + release + ".\n"
		sections = slices.Insert(sections, len(sections)-1, section{name: ".rodata", typ: elf.SHT_PROGBITS, data: []byte(banner)})
	}
	shstr := []byte{0}
	nameOff := make([]uint32, len(sections))
	for i, s := range sections {
		if s.name != "" {
			nameOff[i] = uint32(len(shstr))
			shstr = append(append(shstr, s.name...), 0)
		}
	}
	sections[len(sections)-1].data = shstr

	var body bytes.Buffer
	offsets := make([]uint64, len(sections))
	const ehsize = 64
	for i, s := range sections {
		offsets[i] = ehsize + uint64(body.Len())
		body.Write(s.data)
	}
	for body.Len()%8 != 0 {
		body.WriteByte(0)
	}
	hdr := elf.Header64{
		Type: uint16(elf.ET_DYN), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Shoff: ehsize + uint64(body.Len()), Ehsize: ehsize, Phentsize: 56,
		Shentsize: 64, Shnum: uint16(len(sections)), Shstrndx: uint16(len(sections) - 1),
	}
	copy(hdr.Ident[:], elf.ELFMAG)
	hdr.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	hdr.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	hdr.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	var out bytes.Buffer
	binary.Write(&out, le, hdr)
	out.Write(body.Bytes())
	for i, s := range sections {
		binary.Write(&out, le, elf.Section64{
			Name: nameOff[i], Type: uint32(s.typ), Off: offsets[i], Size: uint64(len(s.data)),
			Link: s.link, Info: s.info, Addralign: 1, Entsize: s.entsize,
		})
	}
	return out.Bytes()
}

// glibcVersionsUpTo are the GLIBC_ versions an x86_64 libc.so.6 of release
// v defines (glibc 2.36's list, cut at v), without GLIBC_ABI_DT_RELR.
func glibcVersionsUpTo(v string) []string {
	all := []string{"2.2.5", "2.2.6", "2.3", "2.3.2", "2.3.3", "2.3.4", "2.4", "2.5", "2.6", "2.7", "2.8", "2.9",
		"2.10", "2.11", "2.12", "2.13", "2.14", "2.15", "2.16", "2.17", "2.18", "2.22", "2.23", "2.24", "2.25",
		"2.26", "2.27", "2.28", "2.29", "2.30", "2.31", "2.32", "2.33", "2.34", "2.35", "2.36"}
	var out []string
	for _, a := range all {
		if CompareGlibc(a, v) <= 0 {
			out = append(out, "GLIBC_"+a)
		}
	}
	return append(out, "GLIBC_PRIVATE")
}

func TestProbeFakeLibcParses(t *testing.T) {
	data := probeFakeLibc("2.31", glibcVersionsUpTo("2.30")...)
	defined, highest, err := glibcDefinitions(data)
	if err != nil {
		t.Fatal(err)
	}
	if highest != "2.30" || !defined["GLIBC_2.2.5"] || !defined["GLIBC_PRIVATE"] || defined["GLIBC_2.31"] || defined["libc.so.6"] {
		t.Errorf("highest %q, defined %v", highest, defined)
	}
	if r := glibcRelease(data); r != "2.31" {
		t.Errorf("release %q, want 2.31", r)
	}
	if r := glibcRelease(probeFakeLibc("", "GLIBC_2.2.5")); r != "" {
		t.Errorf("release %q without a banner", r)
	}
	// The host's real libc, when there is one where glibc puts it.
	if paths, ok := pathsByArch[runtime.GOARCH]; ok {
		if data, err := os.ReadFile(paths.libc[0]); err == nil {
			_, highest, err := glibcDefinitions(data)
			release := glibcRelease(data)
			if err != nil || highest == "" || release == "" || CompareGlibc(release, highest) < 0 {
				t.Errorf("host %s: highest %q, release %q, %v", paths.libc[0], highest, release, err)
			}
			t.Logf("host %s: glibc %s, highest version defined %s", paths.libc[0], release, highest)
		}
	}
}

// probeTestLayouts builds the file systems of typical images for this
// architecture.
type probeTestLayouts struct {
	paths   probePaths
	triplet string // x86_64-linux-gnu
}

func newProbeTestLayouts(t *testing.T) probeTestLayouts {
	paths, ok := pathsByArch[runtime.GOARCH]
	if !ok {
		t.Skipf("no probe paths for %s", runtime.GOARCH)
	}
	return probeTestLayouts{paths: paths, triplet: path.Base(path.Dir(paths.libc[0]))}
}

// bookworm: merged /usr, the loader a link into the triplet directory.
func (l probeTestLayouts) bookworm() *probeFakeFS {
	loader := path.Base(l.paths.glibcLoader)
	return &probeFakeFS{
		files: map[string][]byte{
			"/usr/lib/" + l.triplet + "/" + loader: []byte("\x7fELF loader"),
			"/usr/lib/" + l.triplet + "/libc.so.6": probeFakeLibc("2.36", append(glibcVersionsUpTo("2.36"), "GLIBC_ABI_DT_RELR")...),
			"/usr/lib/os-release":                  []byte("PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nID=debian\n"),
			"/usr/bin/python3":                     []byte("\x7fELF"),
		},
		links: map[string]string{
			"/lib":                       "usr/lib",
			"/lib64":                     "usr/lib64",
			"/usr" + l.paths.glibcLoader: "/lib/" + l.triplet + "/" + loader,
			"/etc/os-release":            "../usr/lib/os-release",
		},
	}
}

// bullseye: separate /lib, versioned file names behind relative links.
func (l probeTestLayouts) bullseye() *probeFakeFS {
	dir := "/lib/" + l.triplet
	return &probeFakeFS{
		files: map[string][]byte{
			dir + "/ld-2.31.so":   []byte("\x7fELF loader"),
			dir + "/libc-2.31.so": probeFakeLibc("2.31", glibcVersionsUpTo("2.30")...),
			"/etc/os-release":     []byte("PRETTY_NAME=\"Debian GNU/Linux 11 (bullseye)\"\nID=debian\n"),
		},
		links: map[string]string{
			l.paths.glibcLoader:      dir + "/ld-2.31.so",
			dir + "/libc.so.6":       "libc-2.31.so",
			dir + "/ld-linux-x.so.2": "ld-2.31.so",
			"/usr/lib/" + l.triplet:  "../../lib/" + l.triplet, // a directory link, for good measure
		},
	}
}

func (l probeTestLayouts) alpine() *probeFakeFS {
	return &probeFakeFS{
		files: map[string][]byte{
			l.paths.muslLoader: []byte("\x7fELF musl"),
			"/bin/busybox":     []byte("\x7fELF"),
			"/etc/os-release":  []byte("NAME=\"Alpine Linux\"\nID=alpine\nPRETTY_NAME=\"Alpine Linux v3.20\"\n"),
		},
		links: map[string]string{"/lib/libc.musl-x86_64.so.1": path.Base(l.paths.muslLoader)},
	}
}

func (l probeTestLayouts) static() *probeFakeFS {
	return &probeFakeFS{files: map[string][]byte{"/bin/busybox": []byte("\x7fELF")}}
}

// with applies changes to a layout.
func (f *probeFakeFS) with(change func(f *probeFakeFS)) *probeFakeFS {
	for _, m := range []*map[string][]byte{&f.files} {
		if *m == nil {
			*m = map[string][]byte{}
		}
	}
	for _, m := range []*map[string]string{&f.links, &f.racy} {
		if *m == nil {
			*m = map[string]string{}
		}
	}
	if f.sizes == nil {
		f.sizes = map[string]int64{}
	}
	if f.fail == nil {
		f.fail = map[string]error{}
	}
	change(f)
	return f
}

func TestProbe(t *testing.T) {
	l := newProbeTestLayouts(t)
	ld, musl := l.paths.glibcLoader, l.paths.muslLoader
	runner := Requirements{Libc: LibcGlibc, Interpreter: ld, MinGlibc: "2.34",
		GlibcVersions: []string{"GLIBC_2.2.5", "GLIBC_2.3.2", "GLIBC_2.32", "GLIBC_2.34"}, SharedLibraries: []string{"libc.so.6"}}
	withVersions := func(vs ...string) Requirements {
		r := runner
		r.GlibcVersions = append(slices.Clone(r.GlibcVersions), vs...)
		slices.SortFunc(r.GlibcVersions, compareVersionNames)
		return r
	}
	libcPath := "/lib/" + l.triplet + "/libc.so.6"
	tests := []struct {
		name string
		fs   *probeFakeFS
		req  Requirements
		want Verdict
		// detailHas is part of Verdict.Detail, when want gives none.
		detailHas string
		reject    string // the whole message; "" when accepted
		// rejectHas are parts of the message, when it is not given whole.
		rejectHas []string
	}{
		{
			name: "bookworm", fs: l.bookworm(), req: runner,
			want: Verdict{Libc: LibcGlibc, Loader: ld, LibcPath: libcPath, GlibcVersion: "2.36", OSID: "debian", OSName: "Debian GNU/Linux 12 (bookworm)"},
		},
		{
			name: "bullseye", fs: l.bullseye(), req: runner,
			want:   Verdict{Libc: LibcGlibc, Loader: ld, LibcPath: libcPath, GlibcVersion: "2.31", Missing: []string{"GLIBC_2.32", "GLIBC_2.34"}, OSID: "debian", OSName: "Debian GNU/Linux 11 (bullseye)"},
			reject: "image img has glibc 2.31, but stevedore's step runner needs glibc 2.34 (GLIBC_2.32, GLIBC_2.34 missing); use an image based on Debian 12, Ubuntu 22.04 or newer",
		},
		{
			// GLIBC_2.31 is libpthread's, not libc.so.6's, in glibc 2.31.
			name: "bullseye, a runner needing 2.31", fs: l.bullseye(),
			req:  Requirements{Libc: LibcGlibc, Interpreter: ld, MinGlibc: "2.31", GlibcVersions: []string{"GLIBC_2.2.5", "GLIBC_2.28", "GLIBC_2.31"}},
			want: Verdict{Libc: LibcGlibc, Loader: ld, LibcPath: libcPath, GlibcVersion: "2.31", OSID: "debian", OSName: "Debian GNU/Linux 11 (bullseye)"},
		},
		{
			name: "alpine", fs: l.alpine(), req: runner,
			want:   Verdict{Libc: LibcMusl, Loader: musl, OSID: "alpine", OSName: "Alpine Linux v3.20"},
			reject: "image img uses musl libc (found " + musl + "; /etc/os-release says ID=alpine): stevedore's step runner needs glibc 2.34 or newer; use a glibc-based image, e.g. Debian or Ubuntu (debian:bookworm-slim), instead of Alpine",
		},
		{
			name: "static", fs: l.static(), req: runner,
			want:   Verdict{Libc: LibcNone},
			reject: "image img has no dynamic loader (looked for " + ld + " and " + musl + "): it looks like a static or distroless image; stevedore's step runner needs glibc 2.34 or newer and its loader in the image; use a glibc-based image, e.g. debian:bookworm-slim, or a distroless base image rather than a static one",
		},
		{
			name: "a static runner fits anything", fs: l.static(), req: Requirements{},
			want: Verdict{Libc: LibcNone},
		},
		{
			name: "debian with the musl package is glibc",
			fs:   l.bookworm().with(func(f *probeFakeFS) { f.files["/usr"+musl] = []byte("\x7fELF musl") }),
			req:  runner,
			want: Verdict{Libc: LibcGlibc, Loader: ld, LibcPath: libcPath, GlibcVersion: "2.36", OSID: "debian", OSName: "Debian GNU/Linux 12 (bookworm)"},
		},
		{
			name:      "alpine with gcompat is musl",
			fs:        l.alpine().with(func(f *probeFakeFS) { f.links[ld] = musl }),
			req:       runner,
			want:      Verdict{Libc: LibcMusl, Loader: musl, OSID: "alpine", OSName: "Alpine Linux v3.20"},
			rejectHas: []string{"uses musl libc", "instead of Alpine"},
		},
		{
			name: "the glibc loader's name leading to musl's loader elsewhere",
			fs: l.static().with(func(f *probeFakeFS) {
				f.files["/opt/musl/lib/ld-musl-x.so.1"] = []byte("\x7fELF musl")
				f.links[ld] = "/opt/musl/lib/ld-musl-x.so.1"
			}),
			req:       runner,
			want:      Verdict{Libc: LibcMusl, Loader: ld},
			rejectHas: []string{"uses musl libc (found " + ld + ")", "instead of a musl-based image"},
		},
		{
			name: "a dangling loader link is no loader",
			fs:   l.static().with(func(f *probeFakeFS) { f.links[ld] = "/lib/" + l.triplet + "/ld-2.99.so" }),
			req:  runner, want: Verdict{Libc: LibcNone},
			rejectHas: []string{"has no dynamic loader"},
		},
		{
			name:      "loader without libc.so.6",
			fs:        l.static().with(func(f *probeFakeFS) { f.files[ld] = []byte("\x7fELF loader") }),
			req:       runner,
			want:      Verdict{Libc: LibcGlibc, Loader: ld, Detail: "no libc.so.6 (looked for " + strings.Join(l.paths.libc, ", ") + ")"},
			rejectHas: []string{"has glibc's loader " + ld + " but no libc.so.6 (looked for " + l.paths.libc[0], "use a complete glibc-based image"},
		},
		{
			name:      "libc.so.6 that is not ELF",
			fs:        l.bookworm().with(func(f *probeFakeFS) { f.files["/usr/lib/"+l.triplet+"/libc.so.6"] = []byte("GROUP ( libc.so.6 )") }),
			req:       runner,
			want:      Verdict{Libc: LibcGlibc, Loader: ld, LibcPath: libcPath, OSID: "debian", OSName: "Debian GNU/Linux 12 (bookworm)"},
			detailHas: "its libc.so.6 (" + libcPath + ") is not a readable ELF shared object (",
			rejectHas: []string{"has glibc's loader " + ld + " but its libc.so.6 (" + libcPath + ") is not a readable ELF shared object"},
		},
		{
			name: "libc.so.6 that is not glibc's",
			fs:   l.bookworm().with(func(f *probeFakeFS) { f.files["/usr/lib/"+l.triplet+"/libc.so.6"] = probeFakeLibc("") }),
			req:  runner,
			want: Verdict{Libc: LibcGlibc, Loader: ld, LibcPath: libcPath, OSID: "debian", OSName: "Debian GNU/Linux 12 (bookworm)",
				Detail: "its libc.so.6 (" + libcPath + ") defines no GLIBC_ versions, so it is not glibc's"},
			rejectHas: []string{"defines no GLIBC_ versions"},
		},
		{
			name: "libc.so.6 too large to read",
			fs:   l.bookworm().with(func(f *probeFakeFS) { f.sizes["/usr/lib/"+l.triplet+"/libc.so.6"] = 64 << 20 }),
			req:  runner,
			want: Verdict{Libc: LibcGlibc, Loader: ld, LibcPath: libcPath, OSID: "debian", OSName: "Debian GNU/Linux 12 (bookworm)",
				Detail: "its libc.so.6 (" + libcPath + ") is larger than 32 MiB, far more than glibc's"},
			rejectHas: []string{"larger than 32 MiB"},
		},
		{
			name: "a version only another glibc library defines",
			fs:   l.bookworm(), req: withVersions("GLIBC_2.20"),
			want: Verdict{Libc: LibcGlibc, Loader: ld, LibcPath: libcPath, GlibcVersion: "2.36", OSID: "debian", OSName: "Debian GNU/Linux 12 (bookworm)"},
		},
		{
			name: "a named version the libc lacks",
			fs: l.bookworm().with(func(f *probeFakeFS) {
				f.files["/usr/lib/"+l.triplet+"/libc.so.6"] = probeFakeLibc("", glibcVersionsUpTo("2.35")...)
			}),
			req:    withVersions("GLIBC_ABI_DT_RELR"),
			want:   Verdict{Libc: LibcGlibc, Loader: ld, LibcPath: libcPath, GlibcVersion: "2.35", Missing: []string{"GLIBC_ABI_DT_RELR"}, OSID: "debian", OSName: "Debian GNU/Linux 12 (bookworm)"},
			reject: "image img has glibc 2.35, which lacks GLIBC_ABI_DT_RELR that stevedore's step runner needs; use an image based on Debian 12, Ubuntu 24.04 or newer",
		},
		{
			name: "os-release replaced by a link between stat and copy",
			fs: l.alpine().with(func(f *probeFakeFS) {
				f.files["/usr/lib/os-release"] = f.files["/etc/os-release"]
				f.racy["/etc/os-release"] = "../usr/lib/os-release"
				f.files["/etc/os-release"] = []byte("ID=wrong\n")
			}),
			req:       runner,
			want:      Verdict{Libc: LibcMusl, Loader: musl, OSID: "alpine", OSName: "Alpine Linux v3.20"},
			rejectHas: []string{"ID=alpine"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := Probe(context.Background(), tt.fs, "c0ffee", tt.req)
			if err != nil {
				t.Fatal(err)
			}
			if tt.detailHas != "" {
				if !strings.Contains(v.Detail, tt.detailHas) {
					t.Errorf("detail %q lacks %q", v.Detail, tt.detailHas)
				}
				tt.want.Detail = v.Detail
			}
			if !equalVerdicts(v, tt.want) {
				t.Errorf("verdict\n %+v\nwant\n %+v", v, tt.want)
			}
			err = v.Check("img", tt.req)
			wantReject := tt.reject != "" || len(tt.rejectHas) > 0
			if !wantReject {
				if err != nil {
					t.Errorf("rejected: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrImageRejected) {
				t.Fatalf("Check: %v, want ErrImageRejected", err)
			}
			var rej *RejectedError
			if !errors.As(err, &rej) || rej.Image != "img" || rej.Verdict.Libc != v.Libc {
				t.Errorf("errors.As RejectedError: %+v", rej)
			}
			if tt.reject != "" && err.Error() != tt.reject {
				t.Errorf("message\n %s\nwant\n %s", err, tt.reject)
			}
			for _, part := range tt.rejectHas {
				if !strings.Contains(err.Error(), part) {
					t.Errorf("message %q lacks %q", err, part)
				}
			}
		})
	}
}

func equalVerdicts(a, b Verdict) bool {
	return a.Libc == b.Libc && a.Loader == b.Loader && a.LibcPath == b.LibcPath && a.GlibcVersion == b.GlibcVersion &&
		slices.Equal(a.Missing, b.Missing) && a.Detail == b.Detail && a.OSID == b.OSID && a.OSName == b.OSName
}

func TestProbeFailures(t *testing.T) {
	l := newProbeTestLayouts(t)
	req := Requirements{Libc: LibcGlibc, Interpreter: l.paths.glibcLoader, MinGlibc: "2.34", GlibcVersions: []string{"GLIBC_2.34"}}
	engineDown := errors.New("fake engine: 500 Internal Server Error")
	tests := []struct {
		name string
		fs   *probeFakeFS
		ctx  func() context.Context
	}{
		{name: "engine error", fs: l.bookworm().with(func(f *probeFakeFS) { f.fail[l.paths.glibcLoader] = engineDown })},
		{name: "engine error on libc", fs: l.bookworm().with(func(f *probeFakeFS) { f.fail[l.paths.libc[0]] = engineDown })},
		{name: "symbolic link loop", fs: l.bookworm().with(func(f *probeFakeFS) {
			delete(f.files, "/usr/lib/"+l.triplet+"/libc.so.6")
			f.links["/usr/lib/"+l.triplet+"/libc.so.6"] = "libc.so.6"
		})},
		{name: "cancelled", fs: l.bookworm(), ctx: func() context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			if tt.ctx != nil {
				ctx = tt.ctx()
			}
			v, err := Probe(ctx, tt.fs, "c0ffee", req)
			if err == nil {
				t.Fatalf("no error; verdict %+v", v)
			}
			if errors.Is(err, ErrImageRejected) {
				t.Errorf("a failure to probe is not a rejection: %v", err)
			}
			t.Log(err)
		})
	}
}

func TestParseOSRelease(t *testing.T) {
	id, name := parseOSRelease([]byte("# comment\nNAME=Foo\nID='foo'\nPRETTY_NAME=\"Foo \\\"Linux\\\" \\$1\"\n\nBROKEN\n"))
	if id != "foo" || name != `Foo "Linux" $1` {
		t.Errorf("ID %q, PRETTY_NAME %q", id, name)
	}
}

func TestVerdictSummary(t *testing.T) {
	for v, want := range map[*Verdict]string{
		{Libc: LibcGlibc, Loader: "/lib64/ld-linux-x86-64.so.2", GlibcVersion: "2.36", OSName: "Debian GNU/Linux 12 (bookworm)"}: "glibc 2.36 (/lib64/ld-linux-x86-64.so.2, Debian GNU/Linux 12 (bookworm))",
		{Libc: LibcMusl, Loader: "/lib/ld-musl-x86_64.so.1", OSID: "alpine"}:                                                     "musl libc (/lib/ld-musl-x86_64.so.1, ID=alpine)",
		{Libc: LibcNone}: "no dynamic loader",
		{Libc: LibcGlibc, GlibcVersion: "2.31", Missing: []string{"GLIBC_2.34"}}: "glibc 2.31, lacks GLIBC_2.34",
	} {
		if got := v.Summary(); got != want {
			t.Errorf("Summary %q, want %q", got, want)
		}
	}
}

func TestSuggestImage(t *testing.T) {
	for _, tt := range []struct {
		version string
		newer   bool
		want    string
	}{
		{"2.34", false, "an image based on Debian 12, Ubuntu 22.04 or newer"},
		{"2.31", false, "an image based on Debian 11, Ubuntu 20.04 or newer"},
		{"2.40", false, "an image based on Debian 13 or newer"},
		{"2.50", false, "an image with glibc 2.50 or newer"},
		{"2.36", true, "an image based on Debian 13, Ubuntu 24.04 or newer"},
	} {
		if got := suggestImage(tt.version, tt.newer); got != tt.want {
			t.Errorf("suggestImage(%q, %v) = %q, want %q", tt.version, tt.newer, got, tt.want)
		}
	}
}

func TestProbeCache(t *testing.T) {
	var c ProbeCache // the zero value works
	if _, ok := c.Get("sha256:a"); ok {
		t.Fatal("an empty cache has a verdict")
	}
	c.Put("", Verdict{Libc: LibcNone})
	if _, ok := c.Get(""); ok {
		t.Error("an empty image ID was cached")
	}
	v := Verdict{Libc: LibcGlibc, GlibcVersion: "2.31", Missing: []string{"GLIBC_2.34"}}
	c.Put("sha256:a", v)
	v.Missing[0] = "changed after Put"
	got, ok := c.Get("sha256:a")
	if !ok || got.GlibcVersion != "2.31" || got.Missing[0] != "GLIBC_2.34" {
		t.Fatalf("Get %+v %v", got, ok)
	}
	got.Missing[0] = "changed after Get"
	if again, _ := c.Get("sha256:a"); again.Missing[0] != "GLIBC_2.34" {
		t.Errorf("a Get's verdict shares memory with the cache: %v", again.Missing)
	}

	cache := NewProbeCache()
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 500 {
				id := fmt.Sprintf("sha256:%d", (i*500+j)%700)
				cache.Put(id, Verdict{Libc: LibcGlibc, GlibcVersion: "2.36"})
				if v, ok := cache.Get(id); ok && v.GlibcVersion != "2.36" {
					t.Errorf("Get %s: %+v", id, v)
				}
			}
		}()
	}
	wg.Wait()
	for i := range maxCachedVerdicts + 10 {
		cache.Put(fmt.Sprintf("sha256:x%d", i), Verdict{Libc: LibcNone})
	}
	if n := len(cache.m); n != maxCachedVerdicts {
		t.Errorf("%d verdicts cached, want at most %d", n, maxCachedVerdicts)
	}
}

// TestProbeFixtures probes created, never started containers of the fixture
// images on the real engine, for the requirements of the tests' tool bundle
// (its runner built as `make build` builds it, for glibc 2.17 and newer) and
// of one whose runner is linked against the host's glibc (needing 2.34 on
// Debian 12), which bullseye's 2.31 cannot run.
func TestProbeFixtures(t *testing.T) {
	cli, _ := testenv.Docker(t)
	l := newProbeTestLayouts(t)
	requirements := func(dir string) Requirements {
		b, err := LoadBundle(dir)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("requirements of %s: %+v", b.RunnerPath(), b.Manifest.Requires)
		return b.Manifest.Requires
	}
	req, hostReq := requirements(testenv.BundleDir(t)), requirements(testenv.HostGlibcBundleDir(t))
	if CompareGlibc(hostReq.MinGlibc, "2.31") <= 0 {
		t.Fatalf("the host-glibc runner needs only glibc %s: this host's glibc is too old to test a rejection", hostReq.MinGlibc)
	}
	tests := []struct {
		ref     string
		req     Requirements
		libc    string
		version string
		accept  bool
		has     []string // in the rejection
	}{
		{ref: testenv.Bookworm, req: req, libc: LibcGlibc, version: "2.36", accept: true},
		{ref: testenv.NonRoot, req: req, libc: LibcGlibc, version: "2.36", accept: true},
		{ref: testenv.Bullseye, req: req, libc: LibcGlibc, version: "2.31", accept: true},
		{ref: testenv.Bookworm, req: hostReq, libc: LibcGlibc, version: "2.36", accept: true},
		{ref: testenv.Bullseye, req: hostReq, libc: LibcGlibc, version: "2.31",
			has: []string{"has glibc 2.31", "needs glibc " + hostReq.MinGlibc, "use an image based on Debian"}},
		{ref: testenv.Musl, req: req, libc: LibcMusl, has: []string{"uses musl libc", "found " + l.paths.muslLoader, "ID=alpine", "use a glibc-based image", "instead of Alpine"}},
		{ref: testenv.Static, req: req, libc: LibcNone, has: []string{"no dynamic loader", l.paths.glibcLoader, l.paths.muslLoader, "static or distroless", "use a glibc-based image"}},
	}
	ctx := context.Background()
	// A cache serves one bundle's requirements.
	caches := map[string]*ProbeCache{req.Key(): NewProbeCache(), hostReq.Key(): NewProbeCache()}
	for _, tt := range tests {
		t.Run(tt.ref+"/needs-"+tt.req.MinGlibc, func(t *testing.T) {
			req, cache := tt.req, caches[tt.req.Key()]
			testenv.Image(t, cli, tt.ref)
			c, err := cli.ContainerCreate(ctx, &container.Config{Image: tt.ref, Entrypoint: []string{"/nonexistent"}, Cmd: []string{}}, nil, nil, nil, "")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := cli.ContainerRemove(context.Background(), c.ID, container.RemoveOptions{Force: true}); err != nil {
					t.Errorf("remove container %s: %v", c.ID, err)
				}
			})
			v, err := Probe(ctx, cli, c.ID, req)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("verdict: %+v (%s)", v, v.Summary())
			if v.Libc != tt.libc || v.GlibcVersion != tt.version {
				t.Errorf("libc %q version %q, want %q %q", v.Libc, v.GlibcVersion, tt.libc, tt.version)
			}
			err = v.Check(tt.ref, req)
			if tt.accept {
				if err != nil {
					t.Errorf("rejected: %v", err)
				}
			} else {
				if !errors.Is(err, ErrImageRejected) {
					t.Fatalf("Check: %v, want ErrImageRejected", err)
				}
				t.Logf("rejection: %v", err)
				for _, part := range tt.has {
					if !strings.Contains(err.Error(), part) {
						t.Errorf("rejection lacks %q", part)
					}
				}
			}

			inspect, err := cli.ContainerInspect(ctx, c.ID)
			if err != nil {
				t.Fatal(err)
			}
			if inspect.State == nil || inspect.State.Status != "created" {
				t.Errorf("container state %+v after the probe, want created: nothing of the image may run", inspect.State)
			}
			if _, ok := cache.Get(inspect.Image); ok {
				t.Fatalf("image %s cached before its probe", inspect.Image)
			}
			cache.Put(inspect.Image, v)
			if got, ok := cache.Get(inspect.Image); !ok || !equalVerdicts(got, v) {
				t.Errorf("cache has %+v %v, want %+v", got, ok, v)
			}
		})
	}
}
