#!/usr/bin/env bash
# `make proto`: regenerates the committed Go code of the wire contract with
# Debian's protoc and the Go plugins at the versions go.mod pins.
# `scripts/proto.sh check` regenerates into a temporary directory and fails
# when the committed code differs from it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out=.
[ "${1:-}" = check ] && out=$tmp/out && mkdir -p "$out"

go build -o "$tmp/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go
go build -o "$tmp/protoc-gen-go-grpc" google.golang.org/grpc/cmd/protoc-gen-go-grpc
protoc -I . -I /usr/include \
	--plugin=protoc-gen-go="$tmp/protoc-gen-go" --go_out="$out" --go_opt=module=stevedore \
	--plugin=protoc-gen-go-grpc="$tmp/protoc-gen-go-grpc" --go-grpc_out="$out" --go-grpc_opt=module=stevedore \
	proto/stevedore/v1/agent.proto

if [ "$out" != . ] && ! diff -ru --exclude='*.proto' proto/stevedore/v1 "$out/proto/stevedore/v1"; then
	echo "proto: the committed generated code is stale: run 'make proto' and commit it" >&2
	exit 1
fi
