"""The Android demo's pure-Kotlin core (android_demo/core) against golden vectors written by
edgediff's Python code: compiled with kotlinc and run with JUnit 4 (Debian's kotlin and
junit4; .ci/run installs them and sets EDGEDIFF_REQUIRE_KOTLIN=1, so CI fails rather than
skips without them)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = os.path.join(ROOT, "android_demo", "core")
JARS = ["/usr/share/java/junit4.jar", "/usr/share/java/hamcrest-core.jar",
        "/usr/share/java/kotlin-stdlib.jar"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  missing = [j for j in JARS if not os.path.isfile(j)] + (
      [] if shutil.which("kotlinc") else ["kotlinc"])
  if missing:
    if os.environ.get("EDGEDIFF_REQUIRE_KOTLIN") == "1":
      pytest.fail(f"missing {', '.join(missing)}: apt-get install kotlin junit4")
    pytest.skip(f"missing {', '.join(missing)} (apt-get install kotlin junit4)")
  tmp = tmp_path_factory.mktemp("kotlin")
  golden = str(tmp / "golden")
  subprocess.run([sys.executable, os.path.join(ROOT, "android_demo", "scripts", "write_golden.py"),
                  golden], check=True, capture_output=True)
  jar = str(tmp / "core.jar")
  done = subprocess.run(["kotlinc", os.path.join(CORE, "src", "main", "kotlin"),
                         os.path.join(CORE, "src", "test", "kotlin"), "-cp", JARS[0], "-d", jar],
                        capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  return golden, jar


def _junit(golden: str, jar: str) -> subprocess.CompletedProcess:
  return subprocess.run(
      ["java", f"-Dedgediff.golden={golden}", "-cp", ":".join([jar] + JARS),
       "org.junit.runner.JUnitCore", "edgediff.core.CoreTest"], capture_output=True, text=True)


def test_kotlin_core_agrees_with_python(built):
  done = _junit(*built)
  assert done.returncode == 0 and "OK (" in done.stdout, done.stdout[-4000:]


def test_kotlin_core_sees_one_changed_token_id(built, tmp_path):
  golden, jar = built
  changed = str(tmp_path / "golden")
  shutil.copytree(golden, changed)
  path = os.path.join(changed, "golden.json")
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  data["tokens"][1]["ids"][2] += 1
  with open(path, "w", encoding="utf-8") as f:
    json.dump(data, f, ensure_ascii=False)
  done = _junit(changed, jar)
  assert done.returncode != 0
  assert "tokenIdsMatchPython" in done.stdout and "Tests run: " in done.stdout, done.stdout[-2000:]
