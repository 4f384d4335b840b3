//! scripts/install-deps.sh against a made-up system: stub `apt-get`, `ldconfig`, `id` and the
//! toolchain commands on PATH, and fake library folders (`HEARTH_LIBCLANG_DIRS`). The script
//! must install libclang-dev when only libclang-cpp (which bindgen cannot load) is present,
//! and install nothing when a loadable libclang is there.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/install-deps.sh");

/// A fake system: `bin/` with stubs, `lib/` with library files, `apt.log` of apt-get calls.
struct FakeSystem {
    dir: tempfile::TempDir,
}

impl FakeSystem {
    /// Stubs for every command the script looks for; `ldconfig -p` lists `cache`.
    fn new(cache: &[&str]) -> FakeSystem {
        let fake = FakeSystem {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(fake.bin()).unwrap();
        std::fs::create_dir_all(fake.lib()).unwrap();
        let log = fake.apt_log();
        fake.stub("apt-get", &format!("echo \"$*\" >> '{}'", log.display()));
        fake.stub("id", "echo 0");
        let listing: String = std::iter::once(format!("{} libs found in cache\n", cache.len()))
            .chain(cache.iter().map(|name| {
                format!("\t{name} (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/{name}\n")
            }))
            .collect();
        let cache_file = fake.dir.path().join("ld.so.cache.txt");
        std::fs::write(&cache_file, listing).unwrap();
        fake.stub("ldconfig", &format!("cat '{}'", cache_file.display()));
        for present in ["c++", "make", "curl", "cargo"] {
            fake.stub(present, "exit 0");
        }
        fake
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    fn lib(&self) -> PathBuf {
        self.dir.path().join("lib")
    }

    fn apt_log(&self) -> PathBuf {
        self.dir.path().join("apt.log")
    }

    fn stub(&self, name: &str, body: &str) {
        let path = self.bin().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Put empty library files into `lib/`.
    fn with_libs(self, names: &[&str]) -> FakeSystem {
        for n in names {
            std::fs::write(self.lib().join(n), b"").unwrap();
        }
        self
    }

    /// Run the script; its exit status must be success. Returns the apt-get calls.
    fn run(&self, libclang_path: Option<&Path>) -> Vec<String> {
        let path = format!(
            "{}:{}",
            self.bin().display(),
            std::env::var("PATH").unwrap()
        );
        let mut cmd = Command::new("bash");
        cmd.arg(SCRIPT)
            .env("PATH", path)
            .env("HEARTH_LIBCLANG_DIRS", self.lib())
            .env_remove("LIBCLANG_PATH");
        if let Some(p) = libclang_path {
            cmd.env("LIBCLANG_PATH", p);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "install-deps.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        match std::fs::read_to_string(self.apt_log()) {
            Ok(s) => s.lines().map(str::to_owned).collect(),
            Err(_) => Vec::new(),
        }
    }
}

fn installs(calls: &[String]) -> Vec<&String> {
    calls.iter().filter(|c| c.contains("install")).collect()
}

#[test]
fn only_libclang_cpp_installs_libclang_dev() {
    let fake = FakeSystem::new(&["libclang-cpp.so.16", "libLLVM-16.so.1"])
        .with_libs(&["libclang-cpp.so.16", "libclang-cpp.so"]);
    let calls = fake.run(None);
    let install = installs(&calls);
    assert_eq!(install.len(), 1, "one apt-get install: {calls:?}");
    assert!(
        install[0].split_whitespace().any(|w| w == "libclang-dev"),
        "{calls:?}"
    );
    assert!(calls.iter().any(|c| c.contains("update")), "{calls:?}");
}

#[test]
fn libclang_in_the_linker_cache_installs_nothing() {
    let fake = FakeSystem::new(&["libclang-cpp.so.16", "libclang-16.so.1"]);
    assert_eq!(fake.run(None), Vec::<String>::new());
}

#[test]
fn libclang_in_an_llvm_folder_installs_nothing() {
    let fake = FakeSystem::new(&["libclang-cpp.so.16"])
        .with_libs(&["libclang-cpp.so.16", "libclang-16.so.1"]);
    assert_eq!(fake.run(None), Vec::<String>::new());
}

#[test]
fn libclang_path_is_honoured() {
    let fake = FakeSystem::new(&[]);
    let own = fake.dir.path().join("own-llvm");
    std::fs::create_dir_all(&own).unwrap();
    std::fs::write(own.join("libclang.so"), b"").unwrap();
    assert_eq!(fake.run(Some(&own)), Vec::<String>::new());
    // A LIBCLANG_PATH holding only libclang-cpp does not count.
    std::fs::remove_file(own.join("libclang.so")).unwrap();
    std::fs::write(own.join("libclang-cpp.so.16"), b"").unwrap();
    let calls = fake.run(Some(&own));
    assert!(
        installs(&calls)
            .iter()
            .any(|c| c.split_whitespace().any(|w| w == "libclang-dev")),
        "{calls:?}"
    );
}
