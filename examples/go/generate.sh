#!/usr/bin/env bash
# Generates the Go packages of SSPM's public API (proto/sspm/v1 only: the calls between
# services, sspm.internal.v1, are not for clients) into a GOPATH tree:
#   examples/go/generate.sh <gopath>
# puts them under <gopath>/src/sspm.example/api/gen/go/sspm/v1 (their go_package) and this
# example under <gopath>/src/sspm.example/partneradmin. Needs buf, protoc-gen-go and
# protoc-gen-go-grpc on PATH (README, "A Go client").
set -euo pipefail
gopath=${1:?usage: generate.sh <gopath>}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$gopath/src"
buf generate "$here/../../proto" --template "$here/buf.gen.yaml" --path "$here/../../proto/sspm/v1" \
  --output "$gopath/src"
mkdir -p "$gopath/src/sspm.example/partneradmin"
cp "$here/main.go" "$gopath/src/sspm.example/partneradmin/"
