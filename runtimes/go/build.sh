#!/bin/sh
# Builds a knative-lambda Go function: the platform's program (main.go, rendered for this
# function) inside the function's own module (../function), so its go.mod, go.sum and vendor/
# apply, into bin/function: a static binary. The same script runs in the local builder and in
# the Dockerfile's build stage.
set -eu
runtime=$(cd "$(dirname "$0")" && pwd)
cd "$runtime/../function"
# klambda.dev/function (the Lambda context) is the platform's copy, never a proxy's; a vendored
# build brings its own (go mod vendor copies it).
if grep -q 'klambda.dev/function' go.mod && [ ! -d vendor ]; then
  go mod edit -replace=klambda.dev/function="$runtime/function"
fi
mkdir -p .klambda-main
cp "$runtime/main.go" .klambda-main/main.go
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$runtime/bin/function" ./.klambda-main
