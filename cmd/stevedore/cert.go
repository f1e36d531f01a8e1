package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"stevedore/transport"
)

func newCertCommand() *cobra.Command {
	var stateDir string
	cmd := &cobra.Command{
		Use:   "cert",
		Short: "Create this side's identity when missing and print its thumbprint",
		Long: `Creates the agent's or server's identity in the state directory when there is
none (a self-signed ECDSA P-256 certificate, and its key with mode 0600), and
prints its thumbprint, the SHA-256 of the DER certificate in lowercase hex, as
the only line on stdout. Give that thumbprint to the other side to trust.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			id, created, err := transport.LoadOrCreateIdentity(stateDir)
			if err != nil {
				return err
			}
			if created {
				fmt.Fprintf(cmd.ErrOrStderr(), "created a new identity in %s\n", stateDir)
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), id.Thumbprint)
			return err
		},
	}
	stateDirFlag(cmd, &stateDir)
	return cmd
}
