package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
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
		// Every flag may come from the environment as STEVEDORE_<FLAG>
		// (--max-steps: STEVEDORE_MAX_STEPS); a flag on the command line wins.
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error { return flagsFromEnv(cmd.Flags(), os.LookupEnv) },
	}
	root.AddCommand(newVersionCommand(), newCertCommand(), newAgentCommand(), newRunCommand(), newPrepullCommand(), newBundleCommand(), newServerCommand(), newInstallCommand())
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

// flagsFromEnv sets each flag not given on the command line from
// STEVEDORE_<NAME>, if set. A repeatable flag takes a comma-separated list.
// A flag set this way counts as given, so it wins over a config file.
func flagsFromEnv(fs *pflag.FlagSet, lookup func(string) (string, bool)) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed || f.Name == "help" {
			return
		}
		key := "STEVEDORE_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		v, ok := lookup(key)
		if !ok {
			return
		}
		values := []string{v}
		if strings.HasSuffix(f.Value.Type(), "Array") || strings.HasSuffix(f.Value.Type(), "Slice") {
			values = strings.Split(v, ",")
		}
		for _, one := range values {
			if serr := fs.Set(f.Name, strings.TrimSpace(one)); serr != nil {
				err = fmt.Errorf("%s: %w", key, serr)
				return
			}
		}
	})
	return err
}
