#!/usr/bin/env python3
"""Run the TFLite benchmark_model tool on a phone over ADB (same as `edgediff adb-bench`)."""

import sys

from edgediff import cli

if __name__ == "__main__":
  sys.exit(cli.main(["adb-bench", *sys.argv[1:]]))
