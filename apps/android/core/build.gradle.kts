// The app's platform-free logic: manifest, preprocessing, statistics, benchmark loop and report, artifact copy.
// Pure JVM (no android.*, no ExecuTorch), so that CI compiles and tests it on Linux without Gradle
// (apps/ci/build_cores.sh does the same with kotlinc and JUnit); `./gradlew :core:test` runs the same tests.
plugins {
    id("org.jetbrains.kotlin.jvm")
}

// Bytecode level 17 like :app (compileOptions / jvmTarget there), whatever JDK runs Gradle.
java {
    sourceCompatibility = JavaVersion.VERSION_17
    targetCompatibility = JavaVersion.VERSION_17
}
kotlin { compilerOptions { jvmTarget.set(org.jetbrains.kotlin.gradle.dsl.JvmTarget.JVM_17) } }

dependencies {
    // Android ships org.json in the platform; a plain JVM needs the jar to compile and to test.
    compileOnly("org.json:json:20240303")
    testImplementation("org.json:json:20240303")
    testImplementation("junit:junit:4.13.2")
}

tasks.test {
    // The golden contract and its decoded sample images, read where they live in the repository.
    systemProperty("golden.dir", rootProject.file("../golden").absolutePath)
}
