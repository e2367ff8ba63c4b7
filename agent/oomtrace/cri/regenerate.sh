#!/bin/sh
# Regenerates api_pb2.py, api_pb2.pyi and api_pb2_grpc.py from api.proto with grpcio-tools.
# Run from anywhere: agent/oomtrace/cri/regenerate.sh [python]  (default: the repo's .venv).
# protoc runs from agent/ with the proto named oomtrace/cri/api.proto, so the generated grpc
# module imports `from oomtrace.cri import api_pb2` and the package import works unchanged.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
agent=$(cd "$here/../.." && pwd)
python=${1:-"$agent/../.venv/bin/python"}
cd "$agent"
"$python" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
    oomtrace/cri/api.proto
grep -q '^from oomtrace.cri import api_pb2' oomtrace/cri/api_pb2_grpc.py
