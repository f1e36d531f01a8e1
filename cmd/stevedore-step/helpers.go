package main

import (
	"embed"
	"fmt"
	"os"
	"path/filepath"
)

// helperFiles are written to STEPDIR/.runner for every step: the functions
// every script gets without doing anything (set_variable, get_variable,
// new_artifact, mask, fail_step, set_progress, and Octopus's helpers). They
// hold no secret.
//
//go:embed helpers/helpers.sh helpers/helpers.bash helpers/stevedore_helpers.py helpers/stevedore_bootstrap.py
var helperFiles embed.FS

// Where the helpers go in a step directory.
const (
	runnerDirName    = ".runner"
	helpersSh        = "helpers.sh"
	pythonBootstrap  = "stevedore_bootstrap.py"
	helperFilesEmbed = "helpers"
)

// writeHelpers writes the helper files to dir, creating it.
func writeHelpers(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	entries, err := helperFiles.ReadDir(helperFilesEmbed)
	if err != nil {
		return fmt.Errorf("helpers: %w", err)
	}
	for _, e := range entries {
		data, err := helperFiles.ReadFile(helperFilesEmbed + "/" + e.Name())
		if err != nil {
			return fmt.Errorf("helpers: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), data, 0o644); err != nil {
			return fmt.Errorf("write helper: %w", err)
		}
	}
	return nil
}
