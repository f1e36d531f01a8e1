package main

import "strings"

// masker replaces sensitive values with maskText. The values are held in
// a byte trie, so finding the longest value at a position costs the length
// of the match, not the number of values: a script may declare thousands.
// Every byte covered by any occurrence of any value is masked (overlapping
// occurrences merge into one mask), so no part of a secret that overlaps
// another is left in clear.
type masker struct {
	seen map[string]bool
	// nodes[0] is the root; root indexes its children by byte.
	nodes []trieNode
	root  [256]int32
	n     int
}

type trieNode struct {
	edges []trieEdge
	end   bool // a value ends here
}

type trieEdge struct {
	b    byte
	next int32
}

// add masks v from now on; and each line of a value of several lines, which
// would appear one line per record.
func (m *masker) add(v string) {
	m.addOne(v)
	if strings.Contains(v, "\n") {
		for _, line := range strings.Split(v, "\n") {
			line = strings.TrimSuffix(line, "\r")
			if strings.TrimSpace(line) != "" {
				m.addOne(line)
			}
		}
	}
}

func (m *masker) addOne(v string) {
	if v == "" || m.seen[v] {
		return
	}
	if m.seen == nil {
		m.seen = make(map[string]bool)
		m.nodes = []trieNode{{}}
	}
	m.seen[v] = true
	m.n++
	n := m.root[v[0]]
	if n == 0 {
		n = m.newNode()
		m.root[v[0]] = n
	}
	for i := 1; i < len(v); i++ {
		next := m.child(n, v[i])
		if next == 0 {
			next = m.newNode()
			m.nodes[n].edges = append(m.nodes[n].edges, trieEdge{v[i], next})
		}
		n = next
	}
	m.nodes[n].end = true
}

func (m *masker) newNode() int32 {
	m.nodes = append(m.nodes, trieNode{})
	return int32(len(m.nodes) - 1)
}

// child returns n's child by c, or 0 (the root is nobody's child).
func (m *masker) child(n int32, c byte) int32 {
	for _, e := range m.nodes[n].edges {
		if e.b == c {
			return e.next
		}
	}
	return 0
}

// longestAt returns the length of the longest value at b's start, or 0.
func (m *masker) longestAt(b []byte) int {
	if len(b) == 0 {
		return 0
	}
	n := m.root[b[0]]
	best := 0
	for i := 1; n != 0; i++ {
		if m.nodes[n].end {
			best = i
		}
		if i == len(b) {
			break
		}
		n = m.child(n, b[i])
	}
	return best
}

// apply returns b with every value masked. b itself is never modified (it
// may be the read buffer); a new slice is returned when something matched.
func (m *masker) apply(b []byte) []byte {
	if m.n == 0 {
		return b
	}
	var out []byte
	copied := 0 // b[:copied] is in out
	for i := 0; i < len(b); i++ {
		n := m.longestAt(b[i:])
		if n == 0 {
			continue
		}
		// Extend over every occurrence that starts inside this one.
		end := i + n
		for j := i + 1; j < end; j++ {
			if k := m.longestAt(b[j:]); j+k > end {
				end = j + k
			}
		}
		if out == nil {
			out = make([]byte, 0, len(b))
		}
		out = append(append(out, b[copied:i]...), maskText...)
		copied = end
		i = end - 1
	}
	if out == nil {
		return b
	}
	return append(out, b[copied:]...)
}

func (m *masker) applyString(s string) string {
	return string(m.apply([]byte(s)))
}

// containedIn reports whether s holds a masked value.
func (m *masker) containedIn(s string) bool {
	if m.n == 0 {
		return false
	}
	b := []byte(s)
	for i := range b {
		if m.longestAt(b[i:]) > 0 {
			return true
		}
	}
	return false
}
