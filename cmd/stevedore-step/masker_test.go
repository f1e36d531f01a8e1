package main

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
)

func TestMasker(t *testing.T) {
	cases := []struct {
		name  string
		masks []string
		in    string
		want  string
	}{
		{"none", nil, "nothing to hide", "nothing to hide"},
		{"one", []string{"s3cret"}, "pw=s3cret!", "pw=" + maskText + "!"},
		{"every occurrence", []string{"ab"}, "ab-ab-abab", maskText + "-" + maskText + "-" + maskText + maskText},
		{"longest at a position wins", []string{"abc", "abcdef"}, "xabcdefx", "x" + maskText + "x"},
		{"a value inside another", []string{"bcd", "abcde"}, "abcde", maskText},
		{"overlapping values merge", []string{"abc", "cde"}, "abcde", maskText},
		{"shorter first overlaps a longer", []string{"ab", "bcdef"}, "abcdefg", maskText + "g"},
		{"one byte", []string{"Z"}, "aZbZ", "a" + maskText + "b" + maskText},
		{"multi-byte", []string{"pässwörd"}, "[pässwörd]", "[" + maskText + "]"},
		{"each line of a multi-line value", []string{"line one\nline two"}, "line two", maskText},
		{"partial prefix is not a match", []string{"secret"}, "secre", "secre"},
		{"at the end", []string{"tail"}, "the tail", "the " + maskText},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var m masker
			for _, v := range c.masks {
				m.add(v)
			}
			in := []byte(c.in)
			orig := slices.Clone(in)
			if got := string(m.apply(in)); got != c.want {
				t.Errorf("apply(%q) = %q, want %q", c.in, got, c.want)
			}
			if !bytes.Equal(in, orig) {
				t.Error("apply changed its input")
			}
			if got := m.applyString(c.in); got != c.want {
				t.Errorf("applyString(%q) = %q", c.in, got)
			}
			if got := m.containedIn(c.in); got != (c.want != c.in) {
				t.Errorf("containedIn(%q) = %v", c.in, got)
			}
		})
	}
}

// naiveMask is the obvious masker (every value, longest first, replaced in
// turn): the baseline of BenchmarkMasker and the oracle of FuzzMasker for
// values that do not overlap.
func naiveMask(vals []string, s string) string {
	sorted := slices.Clone(vals)
	slices.SortStableFunc(sorted, func(a, b string) int { return len(b) - len(a) })
	for _, v := range sorted {
		s = strings.ReplaceAll(s, v, maskText)
	}
	return s
}

func FuzzMasker(f *testing.F) {
	f.Add("token-1234", "x", "my token-1234 and x")
	f.Add("ab", "abab", "ababab")
	f.Fuzz(func(t *testing.T, a, b, line string) {
		var m masker
		m.add(a)
		m.add(b)
		got := m.applyString(line)
		// No value survives in clear.
		for _, v := range []string{a, b} {
			if v != "" && !strings.ContainsAny(v, "\n*") && strings.Contains(got, v) {
				t.Fatalf("%q survives in %q (masks %q, %q)", v, got, a, b)
			}
		}
		// Values that cannot overlap each other or the mask text are
		// masked exactly as the naive masker does.
		if a != "" && b != "" && !strings.ContainsAny(a+b, "*\n\r") && len(a) > 1 && len(b) > 1 &&
			!strings.Contains(a, b) && !strings.Contains(b, a) && noOverlap(a, b) && noOverlap(b, a) && noOverlap(a, a) && noOverlap(b, b) {
			if want := naiveMask([]string{a, b}, line); got != want {
				t.Fatalf("masks %q %q on %q: %q, want %q", a, b, line, got, want)
			}
		}
	})
}

// noOverlap reports whether no suffix of a is a prefix of b.
func noOverlap(a, b string) bool {
	for i := 1; i < len(a); i++ {
		if strings.HasPrefix(b, a[i:]) {
			return false
		}
	}
	return true
}

// BenchmarkMasker masks lines with many declared values, against the
// naive masker in the same run:
//
//	go test -run '^$' -bench Masker ./cmd/stevedore-step/
func BenchmarkMasker(b *testing.B) {
	for _, n := range []int{10, 1000, 25000} {
		vals := make([]string, n)
		for i := range vals {
			vals[i] = fmt.Sprintf("secret-value-%06d", i)
		}
		var m masker
		for _, v := range vals {
			m.add(v)
		}
		line := []byte("deploying release 1.2.3 to the staging environment with secret-value-000007 and more text after it")
		b.Run(fmt.Sprintf("trie/%d", n), func(b *testing.B) {
			for b.Loop() {
				m.apply(line)
			}
		})
		b.Run(fmt.Sprintf("naive/%d", n), func(b *testing.B) {
			for b.Loop() {
				naiveMask(vals, string(line))
			}
		})
	}
}
