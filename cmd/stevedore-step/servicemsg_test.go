package main

import (
	"bytes"
	"encoding/base64"
	"errors"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"stevedore/internal/steplog"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestParseServiceMessage(t *testing.T) {
	tests := []struct {
		name string
		line string
		want steplog.Event
		ok   bool
	}{
		{"setVariable", "##stevedore[setVariable name='" + b64("Out") + "' value='" + b64("v 1") + "']",
			steplog.Event{Type: "setVariable", Name: "Out", Value: "v 1"}, true},
		{"sensitive", "##stevedore[setVariable name='" + b64("S") + "' value='" + b64("pw") + "' sensitive='" + b64("true") + "']",
			steplog.Event{Type: "setVariable", Name: "S", Value: "pw", Sensitive: true}, true},
		{"octopus sensitive True", "##octopus[setVariable name='" + b64("S") + "' value='" + b64("pw") + "' sensitive='VHJ1ZQ==']",
			steplog.Event{Type: "setVariable", Name: "S", Value: "pw", Sensitive: true}, true},
		{"sensitive False", "##octopus[setVariable name='" + b64("S") + "' value='" + b64("pw") + "' sensitive='" + b64("False") + "']",
			steplog.Event{Type: "setVariable", Name: "S", Value: "pw"}, true},
		{"empty value", "##stevedore[setVariable name='" + b64("E") + "' value='']",
			steplog.Event{Type: "setVariable", Name: "E"}, true},
		{"trailing CR", "##stevedore[setVariable name='" + b64("A") + "' value='" + b64("b") + "']\r",
			steplog.Event{Type: "setVariable", Name: "A", Value: "b"}, true},
		{"unpadded base64", "##stevedore[setVariable name='" + strings.TrimRight(b64("AB"), "=") + "']",
			steplog.Event{Type: "setVariable", Name: "AB"}, true},
		{"several spaces", "##stevedore[setVariable   name='" + b64("A") + "'  value='" + b64("b") + "' ]",
			steplog.Event{Type: "setVariable", Name: "A", Value: "b"}, true},
		{"value with quotes and newlines", "##stevedore[setVariable name='" + b64("A") + "' value='" + b64("it's\n]a[\r\n") + "']",
			steplog.Event{Type: "setVariable", Name: "A", Value: "it's\n]a[\r\n"}, true},
		{"createArtifact with octopus length", "##octopus[createArtifact path='" + b64("out/a.zip") + "' name='" + b64("a") + "' length='" + b64("12") + "']",
			steplog.Event{Type: "createArtifact", Path: "out/a.zip", Name: "a"}, true},
		{"mask", "##stevedore[mask value='" + b64("hunter2") + "']", steplog.Event{Type: "mask", Value: "hunter2"}, true},
		{"progress", "##stevedore[progress percentage='" + b64("50") + "' message='" + b64("half") + "']",
			steplog.Event{Type: "progress", Percentage: 50, Message: "half"}, true},
		{"failStep", "##stevedore[failStep message='" + b64("broken") + "']", steplog.Event{Type: "failStep", Message: "broken"}, true},
		{"failStep without message", "##stevedore[failStep]", steplog.Event{Type: "failStep"}, true},
		{"resultMessage", "##octopus[resultMessage message='" + b64("all done") + "']", steplog.Event{Type: "resultMessage", Message: "all done"}, true},
		{"stdout-verbose", "##octopus[stdout-verbose]", steplog.Event{Type: "stdout-verbose"}, true},
		{"stdout-default", "##stevedore[stdout-default]", steplog.Event{Type: "stdout-default"}, true},
		{"level switch attributes ignored", "##octopus[stdout-warning x='" + b64("y") + "']", steplog.Event{Type: "stdout-warning"}, true},

		{"not a message", "hello", steplog.Event{}, false},
		{"empty", "", steplog.Event{}, false},
		{"prefix only", "##stevedore[", steplog.Event{}, false},
		{"leading space", " ##stevedore[failStep]", steplog.Event{}, false},
		{"no closing bracket", "##stevedore[failStep", steplog.Event{}, false},
		{"text after bracket", "##stevedore[failStep] x", steplog.Event{}, false},
		{"unknown type", "##stevedore[launchRockets]", steplog.Event{}, false},
		{"unknown level switch", "##octopus[stdout-loud]", steplog.Event{}, false},
		{"stdout-ignore is not honoured", "##octopus[stdout-ignore]", steplog.Event{}, false},
		{"level switch with text after", "##octopus[stdout-warning] now", steplog.Event{}, false},
		{"bad base64", "##stevedore[setVariable name='!!!']", steplog.Event{}, false},
		{"unquoted", "##stevedore[setVariable name=" + b64("A") + "]", steplog.Event{}, false},
		{"unterminated quote", "##stevedore[setVariable name='" + b64("A") + "]", steplog.Event{}, false},
		{"no space between attributes", "##stevedore[setVariable name='" + b64("A") + "'value='" + b64("b") + "']", steplog.Event{}, false},
		{"duplicate attribute", "##stevedore[setVariable name='" + b64("A") + "' name='" + b64("B") + "']", steplog.Event{}, false},
		{"invalid UTF-8 value", "##stevedore[setVariable name='" + b64("A") + "' value='" + b64("\xff") + "']", steplog.Event{}, false},
		{"setVariable without name", "##stevedore[setVariable value='" + b64("b") + "']", steplog.Event{}, false},
		{"sensitive maybe", "##stevedore[setVariable name='" + b64("A") + "' sensitive='" + b64("maybe") + "']", steplog.Event{}, false},
		{"createArtifact without path", "##stevedore[createArtifact name='" + b64("a") + "']", steplog.Event{}, false},
		{"mask without value", "##stevedore[mask]", steplog.Event{}, false},
		{"progress over 100", "##stevedore[progress percentage='" + b64("101") + "']", steplog.Event{}, false},
		{"progress not a number", "##stevedore[progress percentage='" + b64("half") + "']", steplog.Event{}, false},
		{"progress without percentage", "##stevedore[progress message='" + b64("x") + "']", steplog.Event{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := parseServiceMessage([]byte(tt.line))
			if ok != tt.ok || got != tt.want {
				t.Fatalf("parseServiceMessage(%q) = %+v, %v; want %+v, %v", tt.line, got, ok, tt.want, tt.ok)
			}
		})
	}
}

// attrsOf returns the attributes that make ev, for round trips.
func attrsOf(ev steplog.Event) []attr {
	var a []attr
	add := func(k, v string) {
		if v != "" {
			a = append(a, attr{k, v})
		}
	}
	switch ev.Type {
	case evSetVariable:
		add("name", ev.Name)
		add("value", ev.Value)
		if ev.Sensitive {
			add("sensitive", "True")
		}
	case evCreateArtifact:
		add("path", ev.Path)
		add("name", ev.Name)
	case evMask:
		a = append(a, attr{"value", ev.Value})
	case evProgress:
		add("percentage", strconv.Itoa(ev.Percentage))
		add("message", ev.Message)
	case evFailStep:
		add("message", ev.Message)
	}
	return a
}

func TestFormatRoundTrip(t *testing.T) {
	for _, ev := range []steplog.Event{
		{Type: "setVariable", Name: "Octopus.Action.Name", Value: "ünïcødé 'quoted' ]\n"},
		{Type: "setVariable", Name: "S", Value: "x", Sensitive: true},
		{Type: "createArtifact", Path: "/a b/c", Name: "c"},
		{Type: "mask", Value: ""},
		{Type: "progress", Percentage: 0},
		{Type: "progress", Percentage: 100, Message: "done"},
		{Type: "failStep", Message: "why"},
	} {
		line := formatServiceMessage(ev.Type, attrsOf(ev))
		if !bytes.HasSuffix(line, []byte("\n")) {
			t.Fatalf("%q: no newline", line)
		}
		got, ok := parseServiceMessage(bytes.TrimSuffix(line, []byte("\n")))
		if !ok || got != ev {
			t.Fatalf("round trip of %+v through %q: %+v, %v", ev, line, got, ok)
		}
	}
}

func FuzzParseServiceMessage(f *testing.F) {
	for _, s := range []string{
		"##stevedore[setVariable name='" + b64("A") + "' value='" + b64("b") + "' sensitive='VHJ1ZQ==']",
		"##octopus[createArtifact path='" + b64("x") + "' length='MTI=']",
		"##stevedore[progress percentage='NTA=' message='aGFsZg==']\r",
		"##stevedore[mask value='']",
		"##stevedore[failStep]",
		"##stevedore[setVariable name='!!!']",
		"plain text",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		ev, ok := parseServiceMessage(line)
		if !ok {
			if ev != (steplog.Event{}) {
				t.Fatalf("not ok but an event: %+v", ev)
			}
			return
		}
		if indexServicePrefix(line) != 0 {
			t.Fatalf("%q parsed without a prefix at its start", line)
		}
		switch ev.Type {
		case evSetVariable, evCreateArtifact, evMask, evProgress, evFailStep:
		default:
			t.Fatalf("unknown type %q parsed", ev.Type)
		}
		// The event travels as JSON, which carries only UTF-8 byte-exact.
		for _, s := range []string{ev.Name, ev.Value, ev.Path, ev.Message} {
			if !utf8.ValidString(s) {
				t.Fatalf("%q: a field of %+v is not UTF-8", line, ev)
			}
		}
		if ev.Type == evSetVariable && ev.Name == "" || ev.Type == evCreateArtifact && ev.Path == "" {
			t.Fatalf("%q: %+v lacks its required attribute", line, ev)
		}
		// What parses is what the formatter writes back.
		again, ok := parseServiceMessage(bytes.TrimSuffix(formatServiceMessage(ev.Type, attrsOf(ev)), []byte("\n")))
		if !ok || again != ev {
			t.Fatalf("%q: %+v, formatted and parsed again: %+v, %v", line, ev, again, ok)
		}
	})
}

func TestEmitCommand(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantExit int
		want     steplog.Event
	}{
		{"setVariable", []string{"setVariable", "name=A.b", "value=x=y"}, 0, steplog.Event{Type: "setVariable", Name: "A.b", Value: "x=y"}},
		{"empty value", []string{"mask", "value="}, 0, steplog.Event{Type: "mask"}},
		{"no attributes", []string{"failStep"}, 0, steplog.Event{Type: "failStep"}},
		{"octopus", []string{"--octopus", "resultMessage", "message=it's"}, 0, steplog.Event{Type: "resultMessage", Message: "it's"}},
		{"no type", nil, exitUsage, steplog.Event{}},
		{"bad type", []string{"set variable"}, exitUsage, steplog.Event{}},
		{"not key=value", []string{"mask", "value"}, exitUsage, steplog.Event{}},
		{"bad key", []string{"mask", "va lue=x"}, exitUsage, steplog.Event{}},
		{"key twice", []string{"mask", "value=a", "value=b"}, exitUsage, steplog.Event{}},
		{"invalid UTF-8", []string{"mask", "value=\xff"}, 1, steplog.Event{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(runnerBin, append([]string{"emit"}, tt.args...)...)
			var stdout bytes.Buffer
			cmd.Stdout = &stdout
			err := cmd.Run()
			if code := exitCode(t, err); code != tt.wantExit {
				t.Fatalf("exit %d, want %d", code, tt.wantExit)
			}
			if tt.wantExit != 0 {
				if stdout.Len() != 0 {
					t.Fatalf("printed %q", stdout.String())
				}
				return
			}
			line, ok := bytes.CutSuffix(stdout.Bytes(), []byte("\n"))
			if !ok || bytes.Contains(line, []byte("\n")) {
				t.Fatalf("not one line: %q", stdout.String())
			}
			if wantPrefix := map[bool]string{false: "##stevedore[", true: "##octopus["}[tt.args[0] == "--octopus"]; !bytes.HasPrefix(line, []byte(wantPrefix)) {
				t.Fatalf("%q does not start with %s", line, wantPrefix)
			}
			ev, ok := parseServiceMessage(line)
			if !ok || ev != tt.want {
				t.Fatalf("%q parses as %+v, %v; want %+v", line, ev, ok, tt.want)
			}
		})
	}
}

func exitCode(t testing.TB, err error) int {
	t.Helper()
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	t.Fatalf("run: %v", err)
	return -1
}
