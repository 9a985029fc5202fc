#!/usr/bin/env bash
# Generates the Python modules of SSPM's API from ../../proto into ./gen (grpcio-tools ships
# protoc and the well-known types, so nothing else is needed).
set -euo pipefail
cd "$(dirname "$0")"
rm -rf gen && mkdir -p gen
python -m grpc_tools.protoc -I ../../proto --python_out=gen --grpc_python_out=gen ../../proto/sspm/v1/*.proto
