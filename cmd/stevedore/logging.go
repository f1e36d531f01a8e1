package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/pflag"
)

// logOptions are the --log-level and --log-format of the long-running
// commands (agent, server).
type logOptions struct {
	level, format string
}

func (l *logOptions) flags(f *pflag.FlagSet) {
	f.StringVar(&l.level, "log-level", "info", "trace, debug, info, warn or error (env STEVEDORE_LOG_LEVEL)")
	f.StringVar(&l.format, "log-format", "text", "text, or json: one JSON object a line, for log shippers (env STEVEDORE_LOG_FORMAT)")
}

// logger makes the command's logger, refusing a level or format it does
// not know rather than logging everything or nothing.
func (l *logOptions) logger(out io.Writer) (hclog.Logger, error) {
	level := hclog.LevelFromString(l.level)
	if level == hclog.NoLevel {
		return nil, fmt.Errorf("--log-level %q: want trace, debug, info, warn or error", l.level)
	}
	var json bool
	switch strings.ToLower(l.format) {
	case "text":
	case "json":
		json = true
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", l.format)
	}
	return hclog.New(&hclog.LoggerOptions{Name: "stevedore", Level: level, Output: out, JSONFormat: json}), nil
}
