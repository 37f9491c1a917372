#!/usr/bin/env python3
"""Run the TFLite benchmark_model tool on a phone over ADB (same as `edgediff adb-bench`)."""

import sys

from edgediff.adb import main

if __name__ == "__main__":
  sys.exit(main())
