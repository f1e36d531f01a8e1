// Command stevedore-step is the step runner of stevedore's tool bundle. The
// agent mounts the bundle read-only into a step's container (or runs it on the
// host) and starts this runner as the container's command.
package main

import (
	"fmt"
	"os"

	"stevedore/internal/version"
)

func main() {
	if len(os.Args) == 2 && (os.Args[1] == "version" || os.Args[1] == "--version") {
		fmt.Printf("stevedore-step %s\n", version.Version)
		return
	}
	fmt.Fprintln(os.Stderr, "usage: stevedore-step version")
	os.Exit(2)
}
