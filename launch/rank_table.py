#!/usr/bin/env python3
"""Thin wrapper: `launch/rank_table.py <action> ...` == `python -m pangu_ms rank-table <action> ...`.

Actions: build (one server, version 1.0), merge (servers in the order given), superpod
(Atlas A3, version 1.2), check. See `python -m pangu_ms rank-table --help`.
"""
import sys

from pangu_ms.cli import main

if __name__ == "__main__":
    sys.exit(main(["rank-table", *sys.argv[1:]]))
