plugins {
  id("com.android.application")
  id("org.jetbrains.kotlin.android")
}

android {
  namespace = "edgediff.demo"
  compileSdk = 35
  defaultConfig {
    applicationId = "edgediff.demo"
    minSdk = 26
    targetSdk = 35
    versionCode = 1
    versionName = "0.1.0"
  }
  compileOptions {
    sourceCompatibility = JavaVersion.VERSION_17
    targetCompatibility = JavaVersion.VERSION_17
  }
  kotlinOptions {
    jvmTarget = "17"
  }
  // Exported models are pushed to the device, not packed into the APK.
}

dependencies {
  implementation(project(":core"))
  // LiteRT's Interpreter API with its GPU and NNAPI delegates (the 1.x line; 2.x's
  // Interpreter runs on the CPU only).
  implementation("com.google.ai.edge.litert:litert:1.4.1")
  implementation("com.google.ai.edge.litert:litert-gpu:1.4.1")
}
