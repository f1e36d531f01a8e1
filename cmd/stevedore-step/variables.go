package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"stevedore/internal/stepspec"
)

// Environment variables the runner gives every script.
const (
	envTicket      = "STEVEDORE_TICKET"
	envStepDir     = "STEVEDORE_STEP_DIR"
	envWorkDir     = "STEVEDORE_WORK_DIR"
	envRunner      = "STEVEDORE_RUNNER"
	envSecretsFD   = "STEVEDORE_SECRETS_FD"
	secretsFDChild = 3 // the first of exec.Cmd.ExtraFiles
)

// isIdentifier reports whether name can be a shell variable's name.
func isIdentifier(name string) bool {
	if name == "" || name[0] >= '0' && name[0] <= '9' {
		return false
	}
	for i := 0; i < len(name); i++ {
		if !isIdentByte(name[i]) {
			return false
		}
	}
	return true
}

func isIdentByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_'
}

// sanitizeName turns a variable's name ("Octopus.Action.Name") into one a
// shell can read ("Octopus_Action_Name"): each character outside
// [A-Za-z0-9_] becomes '_', and a leading digit gets a '_' before it.
func sanitizeName(name string) string {
	var b strings.Builder
	if name != "" && name[0] >= '0' && name[0] <= '9' {
		b.WriteByte('_')
	}
	for _, r := range name {
		if r < 0x80 && isIdentByte(byte(r)) {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

// variableEnv returns the environment entries for the step's variables:
// first those under a sanitized name, then those under their own name, so
// that when "a.b" and "a_b" both exist, $a_b is "a_b"'s value (exec keeps
// the last of duplicate keys). Sensitive variables come after the others
// of each kind. skipped names the variables that cannot be in an
// environment (a NUL in the name or value); get-variable still finds them.
func variableEnv(vars ...[]stepspec.Variable) (env []string, skipped []string) {
	var exact []string
	for _, list := range vars {
		for _, v := range list {
			if v.Name == "" || strings.ContainsRune(v.Name, 0) || strings.ContainsRune(v.Value, 0) {
				skipped = append(skipped, v.Name)
				continue
			}
			if isIdentifier(v.Name) {
				exact = append(exact, v.Name+"="+v.Value)
			} else {
				env = append(env, sanitizeName(v.Name)+"="+v.Value)
			}
		}
	}
	return append(env, exact...), skipped
}

// secretsFile returns a memfd holding the sensitive variables as JSON,
// sealed against any change, for get-variable to read through the script's
// inherited descriptor. A memfd lives in memory only: the values never touch
// a disk.
func secretsFile(vars []stepspec.Variable) (*os.File, error) {
	if vars == nil {
		vars = []stepspec.Variable{}
	}
	data, err := json.Marshal(vars)
	if err != nil {
		return nil, fmt.Errorf("encode secrets: %w", err)
	}
	return sealedMemfd("stevedore-secrets", data)
}

// sealedMemfd returns a memfd holding data, sealed against any change.
func sealedMemfd(name string, data []byte) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), name)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return nil, fmt.Errorf("write %s memfd: %w", name, err)
	}
	// Sealing is a safeguard, not a requirement: a kernel without it still
	// gets a memfd that only this step's processes can reach.
	_, _ = unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_WRITE|unix.F_SEAL_SEAL)
	return f, nil
}

// errNoVariable is returned by lookupVariable for an unknown name.
var errNoVariable = errors.New("no such variable")

// lookupVariable finds a step variable by its name (not its sanitized
// name): a sensitive one in the memfd, then one in step.json. When a name
// appears twice, the last one wins, as in the environment.
func lookupVariable(name string) (string, error) {
	if fd := os.Getenv(envSecretsFD); fd != "" {
		n, err := strconv.Atoi(fd)
		if err != nil || n < 0 {
			return "", fmt.Errorf("%s=%q is not a file descriptor", envSecretsFD, fd)
		}
		data, err := os.ReadFile("/proc/self/fd/" + strconv.Itoa(n))
		if err != nil {
			return "", fmt.Errorf("read sensitive variables: %w", err)
		}
		var vars []stepspec.Variable
		if err := json.Unmarshal(data, &vars); err != nil {
			return "", fmt.Errorf("decode sensitive variables: %w", err)
		}
		if v, ok := findVariable(vars, name); ok {
			return v, nil
		}
	}
	stepDir := os.Getenv(envStepDir)
	if stepDir == "" {
		return "", fmt.Errorf("%s is not set: get-variable works in a step's script", envStepDir)
	}
	var spec stepspec.Spec
	if err := stepspec.ReadJSON(stepDir+"/"+stepspec.SpecFile, &spec); err != nil {
		return "", fmt.Errorf("read step spec: %w", err)
	}
	if v, ok := findVariable(spec.Variables, name); ok {
		return v, nil
	}
	return "", fmt.Errorf("%w named %q", errNoVariable, name)
}

func findVariable(vars []stepspec.Variable, name string) (string, bool) {
	for i := len(vars) - 1; i >= 0; i-- {
		if vars[i].Name == name {
			return vars[i].Value, true
		}
	}
	return "", false
}

// getVariable is "stevedore-step get-variable [--octopus] NAME": it prints
// the value, exactly, without a newline of its own. With --octopus, an
// unknown name prints an empty line and succeeds, as Octopus's
// get_octopusvariable does.
func getVariable(name string, octopus bool) int {
	v, err := lookupVariable(name)
	if octopus && errors.Is(err, errNoVariable) {
		v, err = "\n", nil
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "stevedore-step: get-variable: %v\n", err)
		return 1
	}
	if _, err := os.Stdout.WriteString(v); err != nil {
		fmt.Fprintf(os.Stderr, "stevedore-step: get-variable: %v\n", err)
		return 1
	}
	return 0
}
