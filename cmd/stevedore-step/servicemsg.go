package main

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unicode/utf8"

	"stevedore/internal/steplog"
)

// Service messages are stdout lines through which a script talks to the
// runner:
//
//	##stevedore[setVariable name='TmFtZQ==' value='dmFsdWU=' sensitive='VHJ1ZQ==']
//
// Every value is the standard base64 of UTF-8 text, so that any value (quotes,
// newlines, brackets) fits on one line. "##octopus[...]" is the same, so that
// scripts written for Octopus Deploy work unchanged.
//
// Octopus's log level switches, "##octopus[stdout-warning]" and the like,
// take no attributes: they set the level of the stdout lines that follow,
// until the next switch ("stdout-default" returns to the ordinary level) or
// the script's end. They are not recorded themselves: the level travels on
// each line. As in Octopus, they leave stderr alone.

// Event types (steplog.Event.Type).
const (
	evSetVariable    = "setVariable"
	evCreateArtifact = "createArtifact"
	evMask           = "mask"
	evProgress       = "progress"
	evFailStep       = "failStep"
	// evResultMessage is Octopus's: the reason the step's result reads
	// with. Octopus's fail_step sends it, then exits non-zero.
	evResultMessage = "resultMessage"
)

// levelSwitches are the service messages that set the level of the stdout
// lines that follow.
var levelSwitches = map[string]steplog.Level{
	"stdout-default":   steplog.LevelDefault,
	"stdout-verbose":   steplog.LevelVerbose,
	"stdout-highlight": steplog.LevelHighlight,
	"stdout-wait":      steplog.LevelWait,
	"stdout-warning":   steplog.LevelWarning,
	"stdout-error":     steplog.LevelError,
}

var servicePrefixes = [][]byte{[]byte("##stevedore["), []byte("##octopus[")}

// indexServicePrefix returns the index of the first service message prefix
// in line, or -1.
func indexServicePrefix(line []byte) int {
	off := 0
	for {
		i := bytes.Index(line[off:], []byte("##"))
		if i < 0 {
			return -1
		}
		off += i
		for _, p := range servicePrefixes {
			if bytes.HasPrefix(line[off:], p) {
				return off
			}
		}
		off++
	}
}

// parseServiceMessage parses one stdout line (without its '\n'; a trailing
// '\r' is ignored). It returns false when the line is not a well-formed
// service message of a known type: the caller then keeps it as an ordinary
// line, so nothing a script prints is lost.
//
// The event is what the script asked for, not yet what is recorded: a
// sensitive setVariable holds its plaintext Value and a mask holds its value
// in Value; the runner seals or removes them before writing the event.
func parseServiceMessage(line []byte) (steplog.Event, bool) {
	line = bytes.TrimSuffix(line, []byte("\r"))
	var rest []byte
	for _, p := range servicePrefixes {
		if bytes.HasPrefix(line, p) {
			rest = line[len(p):]
			break
		}
	}
	if rest == nil || len(rest) == 0 || rest[len(rest)-1] != ']' {
		return steplog.Event{}, false
	}
	rest = rest[:len(rest)-1]

	n := nameLen(rest)
	if n == 0 {
		return steplog.Event{}, false
	}
	typ := string(rest[:n])
	rest = rest[n:]

	attrs := make(map[string]string, 4)
	for {
		spaces := len(rest) - len(bytes.TrimLeft(rest, " "))
		rest = rest[spaces:]
		if len(rest) == 0 {
			break
		}
		if spaces == 0 { // attributes are separated by spaces
			return steplog.Event{}, false
		}
		k := nameLen(rest)
		if k == 0 || len(rest) < k+2 || rest[k] != '=' || rest[k+1] != '\'' {
			return steplog.Event{}, false
		}
		key := string(rest[:k])
		rest = rest[k+2:]
		end := bytes.IndexByte(rest, '\'')
		if end < 0 {
			return steplog.Event{}, false
		}
		value, ok := decodeValue(rest[:end])
		if !ok {
			return steplog.Event{}, false
		}
		if _, dup := attrs[key]; dup {
			return steplog.Event{}, false
		}
		attrs[key] = value
		rest = rest[end+1:]
	}
	return eventOf(typ, attrs)
}

// eventOf checks a service message's attributes for its type. Unknown
// attributes are ignored (Octopus's createArtifact sends a length).
func eventOf(typ string, attrs map[string]string) (steplog.Event, bool) {
	ev := steplog.Event{Type: typ}
	switch typ {
	case evSetVariable:
		ev.Name, ev.Value = attrs["name"], attrs["value"]
		if ev.Name == "" {
			return steplog.Event{}, false
		}
		switch s := attrs["sensitive"]; {
		case strings.EqualFold(s, "true"):
			ev.Sensitive = true
		case s != "" && !strings.EqualFold(s, "false"):
			return steplog.Event{}, false
		}
	case evCreateArtifact:
		ev.Path, ev.Name = attrs["path"], attrs["name"]
		if ev.Path == "" {
			return steplog.Event{}, false
		}
	case evMask:
		v, ok := attrs["value"]
		if !ok {
			return steplog.Event{}, false
		}
		ev.Value = v
	case evProgress:
		p, err := strconv.Atoi(strings.TrimSpace(attrs["percentage"]))
		if err != nil || p < 0 || p > 100 {
			return steplog.Event{}, false
		}
		ev.Percentage, ev.Message = p, attrs["message"]
	case evFailStep, evResultMessage:
		ev.Message = attrs["message"]
	default:
		if _, ok := levelSwitches[typ]; ok {
			// Its attributes, if any, mean nothing (Octopus sends none).
			return ev, true
		}
		return steplog.Event{}, false
	}
	return ev, true
}

// nameLen returns the length of the name ([A-Za-z_][A-Za-z0-9_-]*) at the
// start of b, or 0.
func nameLen(b []byte) int {
	for i, c := range b {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_':
		case i > 0 && (c >= '0' && c <= '9' || c == '-'):
		default:
			return i
		}
	}
	return len(b)
}

// decodeValue decodes an attribute's base64 (padded or not) and requires
// UTF-8, which the event's JSON could not carry byte-exact otherwise.
func decodeValue(b []byte) (string, bool) {
	out := make([]byte, base64.RawStdEncoding.DecodedLen(len(b))) // the larger of the two
	n, err := base64.StdEncoding.Decode(out, b)
	if err != nil {
		n, err = base64.RawStdEncoding.Decode(out, b)
		if err != nil {
			return "", false
		}
	}
	out = out[:n]
	if !utf8.Valid(out) {
		return "", false
	}
	return string(out), true
}

// attr is one key and value of a service message.
type attr struct{ key, value string }

// formatServiceMessage returns a well-formed "##stevedore[...]" line, with
// its '\n'.
func formatServiceMessage(typ string, attrs []attr) []byte {
	return formatPrefixed(servicePrefixes[0], typ, attrs)
}

// formatPrefixed returns a service message line with prefix ("##stevedore["
// or "##octopus[").
func formatPrefixed(prefix []byte, typ string, attrs []attr) []byte {
	b := append([]byte(nil), prefix...)
	b = append(b, typ...)
	for _, a := range attrs {
		b = append(b, ' ')
		b = append(b, a.key...)
		b = append(b, "='"...)
		b = base64.StdEncoding.AppendEncode(b, []byte(a.value))
		b = append(b, '\'')
	}
	return append(b, "]\n"...)
}

// emit is "stevedore-step emit [--octopus] TYPE KEY=VALUE...": it prints a
// service message, so that scripts (and the shell helpers) need no base64
// tool. --octopus prints "##octopus[...]", the message Octopus's own helpers
// print.
func emit(args []string) int {
	prefix := servicePrefixes[0]
	if args[0] == "--octopus" && len(args) > 1 {
		prefix, args = servicePrefixes[1], args[1:]
	}
	typ := args[0]
	if nameLen([]byte(typ)) != len(typ) {
		fmt.Fprintf(os.Stderr, "stevedore-step: emit: invalid type %q\n", typ)
		return exitUsage
	}
	attrs := make([]attr, 0, len(args)-1)
	seen := make(map[string]bool, len(args)-1)
	for _, kv := range args[1:] {
		key, value, ok := strings.Cut(kv, "=")
		if !ok || key == "" || nameLen([]byte(key)) != len(key) {
			fmt.Fprintf(os.Stderr, "stevedore-step: emit: %q is not KEY=VALUE\n", kv)
			return exitUsage
		}
		if seen[key] {
			fmt.Fprintf(os.Stderr, "stevedore-step: emit: %s given twice\n", key)
			return exitUsage
		}
		seen[key] = true
		if !utf8.ValidString(value) {
			fmt.Fprintf(os.Stderr, "stevedore-step: emit: the value of %s is not UTF-8 text\n", key)
			return 1
		}
		attrs = append(attrs, attr{key, value})
	}
	// One write, so that the line is not interleaved with other output.
	if _, err := os.Stdout.Write(formatPrefixed(prefix, typ, attrs)); err != nil {
		fmt.Fprintf(os.Stderr, "stevedore-step: emit: %v\n", err)
		return 1
	}
	return 0
}
