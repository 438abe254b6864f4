//! A second Docker engine with user namespace remapping (`--userns-remap=default`:
//! container root is uid 100000 and up on the host, Debian's `dockremap` range), in
//! a temp dir of its own, on its own socket, with a bridge device of its own and no
//! iptables rules: it must touch nothing of the host's engine (given
//! `--bridge=none`, dockerd deletes `docker0`!). The test image is copied into it.
//! Dropping it stops the engine (by pid), removes its bridge, unmounts what it left
//! and removes the directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RemappedDocker {
    dir: PathBuf,
    bridge: String,
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
        let bridge = own_bridge();
        let log = std::fs::File::create(dir.join("engine.log")).expect("log");
        let engine = Command::new("dockerd")
            .arg(format!("--data-root={}", dir.join("data").display()))
            .arg(format!("--exec-root={}", dir.join("exec").display()))
            .arg(format!("--pidfile={}", dir.join("engine.pid").display()))
            .arg(format!(
                "--host=unix://{}",
                dir.join("docker.sock").display()
            ))
            .arg(format!("--bridge={bridge}"))
            .args([
                "--userns-remap=default",
                "--iptables=false",
                "--ip-masq=false",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start dockerd (install docker.io)");
        let remapped = RemappedDocker {
            dir,
            bridge,
            engine,
        };
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
        let _ = Command::new("ip")
            .args(["link", "del", "dev", &self.bridge])
            .status();
        crate::unmount_below(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A bridge device for the engine's default network, on a 10.254.x.0/24 no route
/// of this host uses: `aeus` and six hex digits.
fn own_bridge() -> String {
    let routes = Command::new("ip")
        .args(["-4", "route"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id();
    let x = (0..=255u32)
        .map(|i| (seed.wrapping_add(i) % 256) as u8)
        .find(|x| !routes.contains(&format!("10.254.{x}.")))
        .expect("a free 10.254.x.0/24");
    let name = format!("aeus{:06x}", seed & 0xff_ffff);
    for args in [
        vec!["link", "add", "name", name.as_str(), "type", "bridge"],
        vec![
            "addr",
            "add",
            &format!("10.254.{x}.1/24"),
            "dev",
            name.as_str(),
        ],
        vec!["link", "set", "dev", name.as_str(), "up"],
    ] {
        let made = Command::new("ip").args(&args).status().expect("run ip");
        assert!(made.success(), "ip {args:?} failed");
    }
    name
}
