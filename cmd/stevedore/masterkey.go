package main

import (
	"bufio"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"stevedore/internal/seal"
)

// serverEnvFile is where show-master-key looks for an installed server's
// MASTER_KEY; tests point it elsewhere.
var serverEnvFile = installServerEnv

func newShowMasterKeyCommand() *cobra.Command {
	var dataDir, envFile string
	cmd := &cobra.Command{
		Use:   "show-master-key",
		Short: "Print the master key the server's installation uses, for backups",
		Long: `Prints the master key (base64) that encrypts the server's stored steps, as the
only line on stdout: a backup of the database is readable only with it.
It is the one the server finds, in the same order: MASTER_KEY in this
environment (in a container: ` + "`kubectl exec` or `docker exec`" + ` into the server's),
else MASTER_KEY in --env-file (an installed server's ` + installServerEnv + `,
when it exists), else the key file the server generated in DATA_DIR. Where
there is none yet (a server never started, without MASTER_KEY), it fails
and generates nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			env, from := os.Getenv("MASTER_KEY"), "MASTER_KEY in the environment"
			if env == "" {
				v, err := envFileValue(envFile, "MASTER_KEY", !cmd.Flags().Changed("env-file"))
				if err != nil {
					return err
				}
				env, from = v, "MASTER_KEY in "+envFile
			}
			key, err := seal.ReadMasterKey(env, dataDir)
			if err != nil {
				return err
			}
			if env == "" {
				from = "the key file in " + dataDir
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "the master key, from %s:\n", from)
			_, err = fmt.Fprintln(cmd.OutOrStdout(), base64.StdEncoding.EncodeToString(key))
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&dataDir, "data-dir", defaultDataDir, "the server's data dir (env STEVEDORE_DATA_DIR)")
	f.StringVar(&envFile, "env-file", serverEnvFile, "the server's environment file (KEY=VALUE lines, as systemd's EnvironmentFile)")
	return cmd
}

// envFileValue returns key's value in the KEY=VALUE file at path, "" when
// the file does not set it. A missing file is "" when optional.
func envFileValue(path, key string, optional bool) (string, error) {
	f, err := os.Open(path)
	if optional && errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("--env-file: %w", err)
	}
	defer f.Close()
	var v string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		k, val, ok := strings.Cut(line, "=")
		if !ok || strings.HasPrefix(line, "#") || strings.TrimSpace(k) != key {
			continue
		}
		// The last assignment wins, as in systemd; quotes are its too.
		v = strings.Trim(strings.TrimSpace(val), `"'`)
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("--env-file %s: %w", path, err)
	}
	return v, nil
}
