package testenv

import (
	"os"
	"testing"
)

// The server's stores, as the server's tests (server, cmd/stevedore) run
// against them: STEVEDORE_TEST_BACKEND picks one for the whole package
// run, so that `make test` runs those packages once per backend rather
// than every test twice in one run.
const (
	BackendBolt     = "bolt"
	BackendPostgres = "postgres"
)

// Backend is the store the server's tests use: STEVEDORE_TEST_BACKEND,
// bolt when unset. Another value fails the test, so a typo is not a
// silent run on bbolt.
func Backend(t testing.TB) string {
	t.Helper()
	switch b := os.Getenv("STEVEDORE_TEST_BACKEND"); b {
	case "", BackendBolt:
		return BackendBolt
	case BackendPostgres:
		return BackendPostgres
	default:
		t.Fatalf("STEVEDORE_TEST_BACKEND=%q: want %s or %s", b, BackendBolt, BackendPostgres)
		return ""
	}
}
