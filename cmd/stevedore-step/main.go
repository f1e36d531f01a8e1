// Command stevedore-step is the step runner of stevedore's tool bundle. The
// agent mounts the bundle read-only into a step's container (or runs it on the
// host) and starts this runner as the container's command.
//
// Usage:
//
//	stevedore-step version                    print the version
//	stevedore-step run STEPDIR                run STEPDIR's script (secrets on stdin)
//	stevedore-step emit [--octopus] TYPE [KEY=VALUE...]   print a service message
//	stevedore-step get-variable [--octopus] NAME          print a step variable's value
//
// run is what the agent starts; emit and get-variable are what the helper
// functions given to every script call, through $STEVEDORE_RUNNER.
package main

import (
	"fmt"
	"os"

	"stevedore/internal/version"
)

// Exit codes of the runner itself. A script's own exit code passes through.
const (
	// exitUsage: bad command line.
	exitUsage = 2
	// exitRunnerError: the runner could not run the script (bad spec, bad
	// secrets, an unwritable step directory), or refused to run it a second
	// time. Like docker run's 125.
	exitRunnerError = 125
	// exitCannotExec: the interpreter was found but could not be started.
	exitCannotExec = 126
	// exitNotFound: the interpreter is missing.
	exitNotFound = 127
)

const usage = `usage:
  stevedore-step version
  stevedore-step run STEPDIR
  stevedore-step emit [--octopus] TYPE [KEY=VALUE...]
  stevedore-step get-variable [--octopus] NAME
`

func main() {
	os.Exit(run(os.Args[1:]))
}

// run dispatches a command line and returns the process's exit code.
func run(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return exitUsage
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "version", "--version":
		if len(rest) != 0 {
			break
		}
		fmt.Printf("stevedore-step %s\n", version.Version)
		return 0
	case "run":
		if len(rest) != 1 {
			break
		}
		return runStep(rest[0])
	case "emit":
		if len(rest) == 0 {
			break
		}
		return emit(rest)
	case "get-variable":
		if len(rest) == 2 && rest[0] == "--octopus" {
			return getVariable(rest[1], true)
		}
		if len(rest) != 1 {
			break
		}
		return getVariable(rest[0], false)
	}
	fmt.Fprint(os.Stderr, usage)
	return exitUsage
}
