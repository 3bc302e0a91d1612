#!/bin/bash
# usage: conv.sh name  -> ${SRC:-/tmp/src}/name.py to nbs/name.ipynb
set -e
cd "$(dirname "$0")/.."
for n in "$@"; do
  src=${SRC:-/tmp/src}/$n.py
  dst=nbs/$n.ipynb
  case $n in reports/*) src=${SRC:-/tmp/src}/$(basename $n).py;; esac
  .venv/bin/jupytext --quiet --from py:percent --to ipynb --opt notebook_metadata_filter=-all --opt cell_metadata_filter=tags,-all -o $dst $src
done
