// Package version says which stevedore this is.
package version

// Version is stamped by the build (-ldflags "-X stevedore/internal/version.Version=...").
var Version = "0.0.0-dev"

// Protocol is the wire contract's version, raised on every change that older
// peers cannot read. Capabilities carry it.
const Protocol = 1
