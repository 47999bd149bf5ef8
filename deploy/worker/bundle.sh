#!/bin/sh
# Copy the wirepool driver (pure Python, standard library only) next to the
# worker's entry point so that `wrangler deploy` bundles it.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
rm -rf "$here/src/driver"
cp -r "$here/../../driver" "$here/src/driver"
find "$here/src/driver" -name __pycache__ -type d -prune -exec rm -rf {} +
echo "bundled driver/ into $here/src/driver"
