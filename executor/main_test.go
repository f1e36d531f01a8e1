package executor

import (
	"os"
	"testing"

	"stevedore/internal/testenv"
)

// TestMain removes the bundles testenv builds for these tests.
func TestMain(m *testing.M) {
	code := m.Run()
	testenv.CleanupBundle()
	os.Exit(code)
}
