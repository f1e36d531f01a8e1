package main

import (
	"fmt"
	"runtime"

	"github.com/spf13/cobra"

	"stevedore/internal/version"
)

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of stevedore and of its wire protocol",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "stevedore %s (protocol %d, %s, %s/%s)\n",
				version.Version, version.Protocol, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return err
		},
	}
}
