//! A second Docker engine with user namespace remapping (`--userns-remap=default`:
//! container root is uid 100000 and up on the host, Debian's `dockremap` range), in
//! a temp dir of its own, on its own socket, without networking of its own (no
//! bridge, no iptables: it must not touch the host's engine's rules). The test
//! image is copied into it. Dropping it stops the engine (by pid), unmounts what it
//! left and removes the directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RemappedDocker {
    dir: PathBuf,
    engine: Child,
}

impl RemappedDocker {
    /// Starts the engine and loads `image` (which the host's engine has) into it.
    /// Panics with the engine's log if it does not come up.
    pub fn start(image: &str) -> RemappedDocker {
        let dir = tempfile::Builder::new()
            .prefix("aetherium-userns-")
            .tempdir()
            .expect("temp dir")
            .keep();
        // The remapped root must reach the engine's data root below it.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let log = std::fs::File::create(dir.join("engine.log")).expect("log");
        let engine = Command::new("dockerd")
            .arg(format!("--data-root={}", dir.join("data").display()))
            .arg(format!("--exec-root={}", dir.join("exec").display()))
            .arg(format!("--pidfile={}", dir.join("engine.pid").display()))
            .arg(format!(
                "--host=unix://{}",
                dir.join("docker.sock").display()
            ))
            .args([
                "--userns-remap=default",
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start dockerd (install docker.io)");
        let remapped = RemappedDocker { dir, engine };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !remapped.docker(&["info"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "the remapped engine never answered:\n{}",
                std::fs::read_to_string(remapped.dir.join("engine.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let copied = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "docker save '{image}' | docker -H '{}' load -q",
                remapped.host()
            ))
            .output()
            .expect("copy the image");
        assert!(
            copied.status.success(),
            "cannot copy {image} into the remapped engine: {}",
            String::from_utf8_lossy(&copied.stderr)
        );
        remapped
    }

    /// `unix://<socket>`, as `vmm.docker.host` and `docker -H` take it.
    pub fn host(&self) -> String {
        format!("unix://{}", self.dir.join("docker.sock").display())
    }

    /// Runs `docker -H <this engine> <args>`.
    pub fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .args(args)
            .output()
            .expect("run docker")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for RemappedDocker {
    fn drop(&mut self) {
        // Its containers first (by this engine, so by id), then the engine itself.
        let ids = self.docker(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.engine.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.engine.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.engine.kill();
        let _ = self.engine.wait();
        crate::unmount_below(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
