plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
    id("org.jetbrains.kotlin.plugin.compose")
}

// Must equal the `executorch` Python package that exported the .pte (tests/test_golden.py checks it): a program
// from a newer exporter may use ops or a flatbuffer version an older runtime rejects.
val executorchVersion = "1.5.1"

android {
    namespace = "org.edgecrossformer.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "org.edgecrossformer.demo"
        minSdk = 28 // ImageDecoder (EXIF orientation, HEIF)
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        testInstrumentationRunner = "androidx.test.runner.AndroidJUnitRunner"
        buildConfigField("String", "EXECUTORCH_VERSION", "\"$executorchVersion\"")
        ndk { abiFilters += listOf("arm64-v8a", "x86_64") } // the ABIs the executorch-android AAR ships
    }

    buildTypes {
        release {
            isMinifyEnabled = false
            signingConfig = signingConfigs.getByName("debug") // a demo: installable without a keystore
        }
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions { jvmTarget = "17" }
    buildFeatures {
        compose = true
        buildConfig = true
    }
    androidResources { noCompress += "pte" } // keep the program uncompressed in the APK

    // The device test reads the golden contract and the sample PNGs where they live in the repository (decoded by
    // Android's own BitmapFactory there; the JVM tests in :core read the decoded copies).
    val golden = rootProject.file("../golden")
    val samples = rootProject.file("../../export/samples")
    sourceSets["androidTest"].assets.srcDirs(golden, samples)
}

dependencies {
    implementation(project(":core"))
    implementation("org.pytorch:executorch-android:$executorchVersion")

    implementation(platform("androidx.compose:compose-bom:2024.12.01"))
    implementation("androidx.compose.material3:material3")
    implementation("androidx.compose.ui:ui")
    implementation("androidx.activity:activity-compose:1.9.3")
    implementation("androidx.lifecycle:lifecycle-runtime-ktx:2.8.7")

    androidTestImplementation("androidx.test.ext:junit:1.2.1")
    androidTestImplementation("androidx.test:runner:1.6.2")
}
