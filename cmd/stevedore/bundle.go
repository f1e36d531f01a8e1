package main

import (
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"

	"github.com/spf13/cobra"

	"stevedore/executor"
	"stevedore/internal/version"
)

func newBundleCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bundle",
		Short: "Write or show the manifest of the tool bundle",
		Long: `The tool bundle is the directory mounted read-only into step containers: the
step runner and its manifest, bundle.json, which says what the runner needs
of an image (glibc, its loader, the GLIBC_ versions). The agent finds it in
the directory "bundle" beside the stevedore binary.`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newBundleManifestCommand(), newBundleShowCommand())
	return cmd
}

func newBundleManifestCommand() *cobra.Command {
	var entrypoint, name string
	cmd := &cobra.Command{
		Use:   "manifest DIR",
		Short: "Write DIR/bundle.json from the runner's ELF and print it",
		Long: `Reads the runner's ELF (DIR/<entrypoint>): its interpreter, the shared
libraries and every GLIBC_ version it needs, and writes them with this
stevedore's version to DIR/bundle.json, replacing it atomically. Prints the
manifest on stdout. Safe to repeat: the same runner gives the same file.
A musl-linked runner is refused; a static one requires nothing.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := executor.WriteManifest(args[0], entrypoint, name, version.Version)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s\n", filepath.Join(args[0], executor.ManifestFile))
			return printManifest(cmd.OutOrStdout(), m)
		},
	}
	cmd.Flags().StringVar(&entrypoint, "entrypoint", executor.RunnerName, "the runner's path inside DIR")
	cmd.Flags().StringVar(&name, "name", executor.RunnerName, "the bundle's name")
	return cmd
}

func newBundleShowCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "show [DIR]",
		Short: "Validate a bundle and print its manifest",
		Long: `Loads DIR/bundle.json (by default the bundle beside this binary), checks it
and that its runner is an executable file, and prints the manifest on
stdout. Only reads.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var dir string
			if len(args) == 1 {
				dir = args[0]
			} else {
				var err error
				if dir, err = executor.DefaultBundleDir(); err != nil {
					return err
				}
			}
			b, err := executor.LoadBundle(dir)
			if err != nil {
				return err
			}
			return printManifest(cmd.OutOrStdout(), &b.Manifest)
		},
	}
}

func printManifest(w io.Writer, m *executor.Manifest) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", data)
	return err
}
