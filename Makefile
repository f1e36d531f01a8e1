# stevedore: `make demo` runs the main job, `make test` passes the tests.
# Both do the machine set-up first (scripts/setup.sh).

SHELL   := /bin/bash
GO      ?= go
BIN     ?= bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo 0.0.0-dev)
LDFLAGS := -X stevedore/internal/version.Version=$(VERSION)
# go test flags; e.g. `make test TESTFLAGS=-v` or `TESTFLAGS='-run Pull'`.
TESTFLAGS ?=

.PHONY: all setup build proto proto-check vet fmt-check test fault demo bench bench-backend image agent-image clean

all: build

## setup: install and start the Docker Engine, the local registry and the fixtures (idempotent)
setup:
	@bash scripts/setup.sh

## build: the stevedore binary (static) and the tool bundle beside it, $(BIN)/bundle:
## the step runner, a dynamically linked glibc executable (cgo, external linking;
## needs gcc) linked against a bullseye sysroot so that it runs on glibc 2.17 and
## newer (scripts/build-runner.sh, which the tests use too; the sysroot is made
## once, as root), and bundle.json, derived from the runner's ELF by stevedore itself
build:
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/stevedore ./cmd/stevedore
	GO=$(GO) bash scripts/build-runner.sh $(BIN)/bundle/stevedore-step '$(LDFLAGS)'
	$(BIN)/stevedore bundle manifest $(BIN)/bundle

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

## test: set-up, vet, gofmt, the contract's freshness and every test, against the real engine;
## then the server's packages again on PostgreSQL (they ran on bbolt, the default, in ./...)
SERVER_PKGS := ./server/ ./cmd/stevedore/
test: setup vet fmt-check proto-check
	$(GO) test -count=1 -timeout 30m $(TESTFLAGS) ./...
	STEVEDORE_TEST_BACKEND=postgres $(GO) test -count=1 -timeout 30m $(TESTFLAGS) $(SERVER_PKGS)

## fault: set-up, then the fault suite over real steps: the agent SIGKILLed at
## random across 20 steps, the Docker Engine restarted mid-step (STEVEDORE_FAULTS=1
## enables those two; they stop shared things, so the suite runs one package at a
## time, after `make test`), the server killed mid-step, connections cut, agents
## restarted, steps that ignore TERM cancelled, isolation waits timing out, two
## agents on one host reaping only their own, and every bad input followed by a
## normal step
FAULT_TESTS := Fault|Killed|RidesOut|Restart|Reattach|CutConnection|Cancel|Isolation|Reap|BadInput|Hostile|Flood|Signals|EngineAbsent
fault: setup
	STEVEDORE_FAULTS=1 $(GO) test -count=1 -p 1 -timeout 20m -run '$(FAULT_TESTS)' $(TESTFLAGS) ./...

## demo: set-up, a server and a polling agent on loopback, a real step in a container through the server, its log and exit code
demo: setup build
	@bash scripts/demo.sh

## bench: stevedore run against docker run on the same steps, as ratios
bench: setup build
	@bash scripts/bench.sh

## bench-backend: one server node on bbolt, one on PostgreSQL and two on one PostgreSQL
## in one run, steps/s and pickup latency as ratios of bbolt's (server/bench_backend_test.go)
bench-backend: setup
	$(GO) test -run '^$$' -bench Backend -benchtime 5x ./server/

## image: the server's container image with its built-in worker (stevedore-server:dev),
## on the bookworm fixture as its base, with Debian's docker.io from the package mirror:
## by default it starts its own engine (run it --privileged); DISABLE_DIND=Y drives the
## host's (see packaging/container/Dockerfile)
IMAGE ?= stevedore-server:dev
image: setup build
	. internal/testenv/fixtures.env && docker build -q --build-arg BASE_IMAGE=$$STEVEDORE_FIXTURE_BOOKWORM \
		-t $(IMAGE) -f packaging/container/Dockerfile $(BIN)

## agent-image: the agent's own image (stevedore-agent:dev, the top-level Dockerfile) on the
## bookworm fixture: a polling worker in a container that drives the host's engine (its
## socket mounted, the state dir at the same path inside and out) or a sidecar's (DOCKER_HOST)
AGENT_IMAGE ?= stevedore-agent:dev
agent-image: setup build
	. internal/testenv/fixtures.env && docker build -q --build-arg BASE_IMAGE=$$STEVEDORE_FIXTURE_BOOKWORM \
		-t $(AGENT_IMAGE) -f Dockerfile .

clean:
	rm -rf $(BIN)
