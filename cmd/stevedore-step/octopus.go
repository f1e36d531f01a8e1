package main

import (
	"os"
	"strings"

	"stevedore/internal/stepspec"
)

// Octopus's bash helpers give scripts every variable in an associative
// array, octopus_parameters, keyed by the variable's Octopus name. The runner
// writes the array's declaration, quoted in Go, into a memfd that
// helpers.bash sources once and closes: no fork per variable, and the
// sensitive values never touch a disk.
const (
	envParametersFD   = "STEVEDORE_PARAMETERS_FD"
	parametersFDChild = 4 // the second of exec.Cmd.ExtraFiles
)

// bashParameters returns the bash statement that declares octopus_parameters
// with vars, later lists overriding earlier ones (as in get-variable, a
// sensitive value wins over a plain one of the same name). Variables bash
// cannot hold (an empty name, a NUL byte) are left out and named in skipped.
func bashParameters(vars ...[]stepspec.Variable) (decl []byte, skipped []string) {
	n := 64
	for _, list := range vars {
		for _, v := range list {
			n += len(v.Name) + len(v.Value) + 28
		}
	}
	var b strings.Builder
	b.Grow(n)
	// One assignment a line: bash parses ten thousand of them faster than
	// one compound assignment of ten thousand elements.
	b.WriteString("declare -gA octopus_parameters\n")
	for _, list := range vars {
		for _, v := range list {
			if v.Name == "" || strings.ContainsRune(v.Name, 0) || strings.ContainsRune(v.Value, 0) {
				skipped = append(skipped, v.Name)
				continue
			}
			b.WriteString("octopus_parameters[")
			writeBashQuoted(&b, v.Name)
			b.WriteString("]=")
			writeBashQuoted(&b, v.Value)
			b.WriteByte('\n')
		}
	}
	return []byte(b.String()), skipped
}

// writeBashQuoted writes s in single quotes, where bash takes every byte
// literally ($, backticks, backslashes, newlines); a quote in s closes the
// quotes, adds an escaped quote and opens them again.
func writeBashQuoted(b *strings.Builder, s string) {
	b.WriteByte('\'')
	for {
		i := strings.IndexByte(s, '\'')
		if i < 0 {
			break
		}
		b.WriteString(s[:i])
		b.WriteString(`'\''`)
		s = s[i+1:]
	}
	b.WriteString(s)
	b.WriteByte('\'')
}

// parametersFile returns a sealed memfd holding the declaration of
// octopus_parameters for a bash step.
func (r *runner) parametersFile() (*os.File, error) {
	decl, skipped := bashParameters(r.spec.Variables, r.secrets.Variables)
	for _, name := range skipped {
		r.out.runnerLine("variable %q is not in octopus_parameters: its name is empty or it holds a NUL byte", name)
	}
	return sealedMemfd("stevedore-parameters", decl)
}
