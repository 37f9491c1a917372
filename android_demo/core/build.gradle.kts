// The pure-Kotlin core: no Android dependency, so it also compiles and tests on a plain JVM
// (edgediff's CI runs its tests with Debian's kotlinc 1.3 and JUnit 4; see
// tests/test_android_core.py). `./gradlew :core:test -Pgolden=DIR` runs them here too, with
// DIR written by `python android_demo/scripts/write_golden.py DIR`.
plugins {
  id("org.jetbrains.kotlin.jvm")
}

kotlin {
  jvmToolchain(17)
}

dependencies {
  testImplementation("junit:junit:4.13.2")
}

tasks.test {
  systemProperty("edgediff.golden", (findProperty("golden") ?: "build/golden").toString())
}
