package main

import (
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestFlagsFromEnv(t *testing.T) {
	env := map[string]string{"STEVEDORE_MAX_STEPS": "8", "STEVEDORE_TRUST": "a,b", "STEVEDORE_LISTEN": ":1", "STEVEDORE_CANCEL_GRACE": "3s"}
	tests := []struct {
		name    string
		args    []string
		steps   int
		listen  string
		trust   []string
		grace   time.Duration
		wantErr bool
	}{
		{"env fills what the command line does not give", nil, 8, ":1", []string{"a", "b"}, 3 * time.Second, false},
		{"the command line wins", []string{"--max-steps=2", "--listen=:2"}, 2, ":2", []string{"a", "b"}, 3 * time.Second, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
			steps := fs.Int("max-steps", 4, "")
			listen := fs.String("listen", ":10933", "")
			trust := fs.StringArray("trust", nil, "")
			grace := fs.Duration("cancel-grace", time.Second, "")
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			err := flagsFromEnv(fs, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
			if (err != nil) != tt.wantErr || *steps != tt.steps || *listen != tt.listen || len(*trust) != len(tt.trust) || *grace != tt.grace {
				t.Errorf("err %v: steps %d listen %s trust %v grace %s", err, *steps, *listen, *trust, *grace)
			}
			if !fs.Changed("max-steps") {
				t.Error("a flag from the environment must count as given, to win over the config file")
			}
		})
	}
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	fs.Int("max-steps", 4, "")
	if err := flagsFromEnv(fs, func(string) (string, bool) { return "many", true }); err == nil {
		t.Error("a bad value in the environment must be an error naming the variable")
	}
}
