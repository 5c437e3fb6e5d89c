pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral() // org.pytorch:executorch-android
    }
}

rootProject.name = "EdgeCrossFormerDemo"
// :core is the platform-free logic (pure JVM: no android.*, no ExecuTorch), built and tested on Linux in CI
// (apps/ci/build_cores.sh); :app is the Android shell around it.
include(":core", ":app")
