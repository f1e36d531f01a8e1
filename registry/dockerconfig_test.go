package registry

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeHelperScript is docker-credential-fake: it logs the server URL it was asked
// for, answers from $FAKE_HELPER_DIR/answers (lines "URL JSON"), says "not
// found" the way helpers do, fails for fail.example and hangs for
// slow.example.
const fakeHelperScript = `#!/bin/sh
[ "$1" = get ] || { echo "unsupported action $1" >&2; exit 1; }
url=$(cat)
echo "$url" >> "$FAKE_HELPER_DIR/asked"
case "$url" in
fail.example) echo "the keychain is locked" >&2; exit 3 ;;
slow.example) exec sleep 30 ;;
esac
awk -v u="$url" '$1 == u { sub(/^[^ ]* /, ""); print; found = 1 } END { exit !found }' "$FAKE_HELPER_DIR/answers" && exit 0
echo "credentials not found in native keychain"
exit 1
`

// dockerFixture is a hermetic Docker set-up: config.json directories and
// the fake helper first on PATH.
type dockerFixture struct {
	helpers    string // config with credHelpers and auths
	store      string // config with credsStore: fake
	none       string // no config.json at all
	helperDir  string
	authHubPW  string
	authCfgPW  string
	helperPW   string
	helperTok  string
	shadowedPW string
}

func basicAuth64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func newDockerFixture(t *testing.T) *dockerFixture {
	t.Helper()
	root := t.TempDir()
	f := &dockerFixture{
		helpers: filepath.Join(root, "helpers"), store: filepath.Join(root, "store"),
		none: filepath.Join(root, "none"), helperDir: filepath.Join(root, "bin"),
		authHubPW: "hub-secret", authCfgPW: "cfg-secret", helperPW: "helper-secret",
		helperTok: "helper-token", shadowedPW: "shadowed-secret",
	}
	for _, d := range []string{f.helpers, f.store, f.none, f.helperDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	writeTestJSON(t, filepath.Join(f.helpers, "config.json"), map[string]any{
		"auths": map[string]any{
			dockerIndexServer:               map[string]string{"auth": basicAuth64("hubuser:" + f.authHubPW)},
			"https://auth.example:5000/v2/": map[string]string{"auth": basicAuth64("cfguser:" + f.authCfgPW)},
			"token.example":                 map[string]string{"identitytoken": "id-token"},
			"fields.example":                map[string]string{"username": "fielduser", "password": "field-secret"},
			"bad.example":                   map[string]string{"auth": "%%not-base64%%"},
			"nocolon.example":               map[string]string{"auth": basicAuth64("no-colon-secret")},
			"helped.example":                map[string]string{"auth": basicAuth64("shadow:" + f.shadowedPW)},
			"fallback.example":              map[string]string{"auth": basicAuth64("fallbackuser:fallback-secret")},
			"empty.example":                 map[string]string{},
		},
		"credHelpers": map[string]string{
			"helped.example":   "fake",
			"tokened.example":  "fake",
			"fallback.example": "fake",
			"fail.example":     "fake",
			"slow.example":     "fake",
			"missing.example":  "missing",
			"evil.example":     "../fake",
		},
	})
	writeTestJSON(t, filepath.Join(f.store, "config.json"), map[string]any{
		"auths":      map[string]any{dockerIndexServer: map[string]string{}},
		"credsStore": "fake",
	})
	writeTestFile(t, filepath.Join(f.helperDir, "answers"), strings.Join([]string{
		`helped.example {"ServerURL":"helped.example","Username":"helperuser","Secret":"` + f.helperPW + `"}`,
		`tokened.example {"ServerURL":"tokened.example","Username":"<token>","Secret":"` + f.helperTok + `"}`,
		dockerIndexServer + ` {"ServerURL":"x","Username":"storeuser","Secret":"store-secret"}`,
	}, "\n")+"\n")
	if err := os.WriteFile(filepath.Join(f.helperDir, "docker-credential-fake"), []byte(fakeHelperScript), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("FAKE_HELPER_DIR", f.helperDir)
	t.Setenv("PATH", f.helperDir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return f
}

func writeTestJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, path, string(b))
}

// asked returns the server URLs the fake helper was asked for, and forgets them.
func (f *dockerFixture) asked(t *testing.T) []string {
	t.Helper()
	p := filepath.Join(f.helperDir, "asked")
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(p)
	return strings.Fields(string(b))
}

// legacyIndexHost is the host of Docker's legacy index address.
func legacyIndexHost() string {
	h := strings.TrimPrefix(dockerIndexServer, "https://")
	h, _, _ = strings.Cut(h, "/")
	return h
}

func TestConfigKeyHost(t *testing.T) {
	tests := map[string]string{
		dockerIndexServer:                   defaultHost,
		legacyIndexHost():                   defaultHost,
		"https://" + dockerRegistryHost:     defaultHost,
		dockerRegistryHost:                  defaultHost,
		defaultHost:                         defaultHost,
		"https://Auth.Example:5000/v2/":     "auth.example:5000",
		"http://auth.example:5000":          "auth.example:5000",
		"auth.example:5000/some/path":       "auth.example:5000",
		"localhost:5000":                    "localhost:5000",
		"not a host":                        "",
		"https://bare-word/v1/":             "",
		"https://127.0.0.1:5001/v2/x/y?z=1": "127.0.0.1:5001",
	}
	for key, want := range tests {
		if got := configKeyHost(key); got != want {
			t.Errorf("configKeyHost(%q) = %q, want %q", key, got, want)
		}
	}
}

func TestDockerConfigAndHelpers(t *testing.T) {
	f := newDockerFixture(t)
	tests := []struct {
		name       string
		dir        string
		image      string
		want       Credentials
		wantSource string
		wantAsked  []string // server URLs the helper was asked for
		wantErr    string
		wantIs     error
	}{
		{"auth under the legacy index key, familiar image", f.helpers, "debian",
			Credentials{Username: "hubuser", Password: f.authHubPW}, SourceDockerConfig, nil, "", nil},
		{"auth under the legacy index key, normalised image", f.helpers, defaultHost + "/library/debian:latest",
			Credentials{Username: "hubuser", Password: f.authHubPW}, SourceDockerConfig, nil, "", nil},
		{"auth under a URL key", f.helpers, "auth.example:5000/team/app:1",
			Credentials{Username: "cfguser", Password: f.authCfgPW}, SourceDockerConfig, nil, "", nil},
		{"identitytoken", f.helpers, "token.example/app:1",
			Credentials{IdentityToken: "id-token"}, SourceDockerConfig, nil, "", nil},
		{"username and password fields", f.helpers, "fields.example/app:1",
			Credentials{Username: "fielduser", Password: "field-secret"}, SourceDockerConfig, nil, "", nil},
		{"empty auths entry is anonymous", f.helpers, "empty.example/app:1",
			Credentials{}, SourceNone, nil, "", nil},
		{"no entry is anonymous", f.helpers, "elsewhere.example/app:1",
			Credentials{}, SourceNone, nil, "", nil},
		{"credHelpers wins over auths", f.helpers, "helped.example/app:1",
			Credentials{Username: "helperuser", Password: f.helperPW}, "credential helper docker-credential-fake", []string{"helped.example"}, "", nil},
		{"helper identity token", f.helpers, "tokened.example/app:1",
			Credentials{IdentityToken: f.helperTok}, "credential helper docker-credential-fake", []string{"tokened.example"}, "", nil},
		{"helper has none: auths", f.helpers, "fallback.example/app:1",
			Credentials{Username: "fallbackuser", Password: "fallback-secret"}, SourceDockerConfig, []string{"fallback.example"}, "", nil},
		{"credsStore, default registry asked by its index address", f.store, "debian:12",
			Credentials{Username: "storeuser", Password: "store-secret"}, "credential helper docker-credential-fake", []string{dockerIndexServer}, "", nil},
		{"credsStore has none", f.store, "other.example/app:1",
			Credentials{}, SourceNone, []string{"other.example"}, "", nil},
		{"no config.json", f.none, "debian",
			Credentials{}, SourceNone, nil, "", nil},
		{"no docker dir", filepath.Join(f.none, "absent"), "debian",
			Credentials{}, SourceNone, nil, "", nil},
		{"helper fails", f.helpers, "fail.example/app:1",
			Credentials{}, "", []string{"fail.example"}, "credential helper docker-credential-fake for fail.example: ", nil},
		{"helper times out", f.helpers, "slow.example/app:1",
			Credentials{}, "", []string{"slow.example"}, "docker-credential-fake for slow.example: no answer in 300ms", context.DeadlineExceeded},
		{"helper not installed", f.helpers, "missing.example/app:1",
			Credentials{}, "", nil, "docker-credential-missing", nil},
		{"helper name with a path", f.helpers, "evil.example/app:1",
			Credentials{}, "", nil, "not a helper name", nil},
		{"auth not base64", f.helpers, "bad.example/app:1",
			Credentials{}, "", nil, `auths entry for bad.example: "auth" is not valid base64`, nil},
		{"auth without colon", f.helpers, "nocolon.example/app:1",
			Credentials{}, "", nil, `"auth" is not base64 of user:password`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := NewResolver(nil, tt.dir)
			if err != nil {
				t.Fatal(err)
			}
			// Only the slow helper is given a short time: under load a fake
			// helper that answers may need more than that to start.
			if strings.HasPrefix(tt.image, "slow.") {
				r.helperTimeout = 300 * time.Millisecond
			}
			start := time.Now()
			got, source, err := r.Resolve(context.Background(), tt.image, "", nil)
			if took := time.Since(start); took > 15*time.Second {
				t.Errorf("Resolve took %s", took)
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one saying %q", err, tt.wantErr)
				}
				if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
					t.Errorf("err = %v, want errors.Is %v", err, tt.wantIs)
				}
				for _, secret := range []string{"no-colon-secret", f.shadowedPW} {
					if strings.Contains(err.Error(), secret) {
						t.Errorf("error %q contains a secret", err)
					}
				}
			} else if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			if got != tt.want || source != tt.wantSource {
				t.Errorf("Resolve = %+v, %q; want %+v, %q", got, source, tt.want, tt.wantSource)
			}
			if asked := f.asked(t); strings.Join(asked, " ") != strings.Join(tt.wantAsked, " ") {
				t.Errorf("helper asked for %q, want %q", asked, tt.wantAsked)
			}
		})
	}
}

func TestDockerConfigMalformed(t *testing.T) {
	dir := t.TempDir()
	writeTestFile(t, filepath.Join(dir, "config.json"), `{"auths": {"x.example": {"auth": "secret-ish"`)
	r, err := NewResolver(nil, dir)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = r.Resolve(context.Background(), "x.example/app:1", "", nil)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "config.json")) || strings.Contains(err.Error(), "secret-ish") {
		t.Fatalf("err = %v, want one naming the file and not its content", err)
	}
}
