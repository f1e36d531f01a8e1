package main

import (
	"os"

	"github.com/spf13/cobra"
)

// defaultStateDir holds the identity, journal and workspaces of a worker
// installed as a service. STEVEDORE_STATE_DIR overrides it.
const defaultStateDir = "/var/lib/stevedore"

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "stevedore",
		Short:         "stevedore runs deployment steps in containers or on the host",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newVersionCommand(), newCertCommand(), newAgentCommand(), newRunCommand(), newPrepullCommand(), newBundleCommand())
	return root
}

// stateDirFlag adds --state-dir, defaulting to STEVEDORE_STATE_DIR or defaultStateDir.
func stateDirFlag(cmd *cobra.Command, dir *string) {
	def := defaultStateDir
	if v := os.Getenv("STEVEDORE_STATE_DIR"); v != "" {
		def = v
	}
	cmd.Flags().StringVar(dir, "state-dir", def, "directory of this side's identity and state (env STEVEDORE_STATE_DIR)")
}
