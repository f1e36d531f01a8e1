# An agent configuration with every setting. Durations are Go's ("90s",
# "10m", "1h30m"); sizes are bytes, kB/MB/GB (powers of 1000) or
# KiB/MiB/GiB (powers of 1024).

state_dir    = "/var/lib/stevedore"
listen       = ":10933"
# Prometheus metrics (GET /metrics, plain HTTP) on this address; omit for none.
metrics      = "127.0.0.1:9310"
trust = [
  "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
  "FE:DC:BA:98:76:54:32:10:FE:DC:BA:98:76:54:32:10:FE:DC:BA:98:76:54:32:10:FE:DC:BA:98:76:54:32:10",
]
bundle       = "/opt/stevedore/bundle"
max_steps    = 4
cancel_grace = "10s"
min_free_disk = "1GiB"
# Bytes of a step's own output kept in its log; past it the output is
# counted, not kept, and the log says so. Default: no bound.
max_log_size = "2GiB"
# How long a completed step no client collected keeps its container and
# workspace (and a collected one its journal tombstone).
retention = "12h"
name         = "worker-1"
pools        = ["linux"]
labels       = { zone = "a" }

# A registry and its credentials. One of password, password_env or
# password_file (read at each use, trailing newline trimmed); none for an
# anonymous feed.
feed "acme" {
  registry     = "registry.acme.example:5000"
  username     = "deploy"
  password_env = "ACME_REGISTRY_PASSWORD"
}

feed "acme-ro" {
  registry      = "registry.acme.example:5000"
  username      = "reader"
  password_file = "/run/secrets/acme"
}

images {
  # Globs (Go's path.Match: "*" stops at "/") over image references, in
  # full or in their short form; empty allows every image.
  allowed_images = ["registry.acme.example:5000/*/*", "debian:*"]
  pull_timeout   = "30m"
  stall_timeout  = "2m"
  retries        = 3
  refresh        = "1h"

  prepull "registry.acme.example:5000/base/deploy-tools:2" { feed = "acme" }
  prepull "debian:bookworm-slim" {}

  gc {
    min_age   = "1h"
    max_bytes = "20GB"
    keep      = 20
    interval  = "10m"
  }
}
