//! The tool installer against a real sandbox: a container of the base image made by
//! the Docker backend (host network, so it reaches the fixture server on loopback),
//! recipes from a test catalog directory, downloads from a small HTTP server this
//! test runs, serving tarballs it builds. The internet is never needed.
//!
//! Needs the Docker engine, the base image and the static agent (`make agent`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use aetherium_testkit::FileServer;
use aetherium_testkit::tools::{append_sha256, tool_recipe, tool_tarball};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aetherium_core::agent_client::AgentClient;
use aetherium_core::tools::{
    Arch, Catalog, InstallPlan, ToolError, ToolProgress, ToolSources, ToolSpec, ToolStatus, install,
};
use aetherium_core::vmm::docker::{DockerBackend, DockerBackendConfig};
use aetherium_core::vmm::{Backend, SandboxSpec};
use aetherium_testkit::{static_agent_bin, test_image};
use aetherium_types::agent::{ProcessConfig, StartRequest};

// ---------------------------------------------------------------------------------
// Fixtures: an HTTP file server, tarballs, a test catalog.

/// Sleeps far past its two-second limit; the marker argument finds its process.
const SLOW_RECIPE: &str = r#"name = "slow"
description = "never finishes in time"
default_version = "1"
timeout_seconds = 2
verify = "false"
install = '''
echo "about to sleep"
sleep 4321
'''
"#;

/// A catalog directory with `hello` (requires `hello-dep`), `hello-dep` and `slow`.
fn test_catalog() -> (tempfile::TempDir, Catalog) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hello.toml"),
        tool_recipe("hello", &["hello-dep"]),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("hello-dep.toml"),
        tool_recipe("hello-dep", &[]),
    )
    .unwrap();
    std::fs::write(dir.path().join("slow.toml"), SLOW_RECIPE).unwrap();
    let catalog = Catalog::load(Some(dir.path())).unwrap();
    (dir, catalog)
}

// ---------------------------------------------------------------------------------
// The sandbox.

/// A container of the base image with its agent; removed by id when dropped, even
/// when the test fails.
struct Sandbox {
    backend: DockerBackend,
    vm_id: String,
    agent: AgentClient,
    _run_dir: tempfile::TempDir,
}

impl Sandbox {
    async fn start(label: &str) -> Sandbox {
        Sandbox::start_from(label, &test_image()).await
    }

    async fn start_from(label: &str, image: &str) -> Sandbox {
        let run_dir = tempfile::tempdir().unwrap();
        let vm_id = format!(
            "tools-{label}-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let backend = DockerBackend::connect(DockerBackendConfig {
            host: "unix:///var/run/docker.sock".into(),
            worker_id: format!("test-{vm_id}"),
            installation_id: "test-installation".into(),
            agent_path: static_agent_bin(),
            socket_dir: run_dir.path().to_path_buf(),
            pids_limit: 512,
            // The container shares the host's loopback, where the fixture server is.
            network_mode: "host".into(),
            egress_allow: Vec::new(),
            dns_upstream: aetherium_core::net::dns::host_resolvers(),
        })
        .unwrap();
        let spec = SandboxSpec {
            orchestrator: aetherium_types::Orchestrator::Docker,
            vm_id: vm_id.clone(),
            name: vm_id.clone(),
            image: image.to_string(),
            vcpus: 1,
            memory_mb: 512,
            disk_mb: None,
            network_policy: None,
            network: None,
            access_token: None,
        };
        backend.create(&spec).await.expect("create the sandbox");
        let agent = backend.agent(&vm_id);
        let sandbox = Sandbox {
            backend,
            vm_id,
            agent,
            _run_dir: run_dir,
        };
        sandbox
            .agent
            .wait_ready(Duration::from_secs(30))
            .await
            .expect("agent ready");
        sandbox
    }

    /// How many installer scratch directories (`mktemp -d`) are left in /tmp.
    async fn scratch_dirs(&self) -> usize {
        let count = self.sh("ls -d /tmp/tmp.* 2>/dev/null | wc -l").await;
        count.trim().parse().unwrap()
    }

    /// Runs `sh -c script` in the sandbox; its stdout.
    async fn sh(&self, script: &str) -> String {
        let request = StartRequest {
            process: ProcessConfig {
                cmd: "sh".into(),
                args: vec!["-c".into(), script.into()],
                ..ProcessConfig::default()
            },
            ..StartRequest::default()
        };
        let output = self.agent.run(&request, 1 << 20).await.unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Drop may run inside the test's runtime: delete from a thread of its own.
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                if let Err(e) = runtime.block_on(self.backend.delete(&self.vm_id)) {
                    eprintln!("removing sandbox {}: {e}", self.vm_id);
                }
            });
        });
    }
}

// ---------------------------------------------------------------------------------

fn plan(catalog: &Catalog, specs: &[&str], sources: &ToolSources) -> InstallPlan {
    let specs: Vec<ToolSpec> = specs.iter().map(|s| s.parse().unwrap()).collect();
    catalog
        .plan(&specs, sources, Arch::host().unwrap())
        .unwrap()
}

/// The error message of an install that must fail.
async fn refused(sandbox: &Sandbox, plan: &InstallPlan) -> String {
    install(&sandbox.agent, plan, &recorder().1)
        .await
        .unwrap_err()
        .to_string()
}

/// Collects progress events as `"<kind> <tool>@<version>"`.
fn recorder() -> (Arc<Mutex<Vec<String>>>, impl Fn(ToolProgress) + Send + Sync) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let record = move |p: ToolProgress| {
        let line = match p {
            ToolProgress::Started { tool, version } => format!("started {tool}@{version}"),
            ToolProgress::Skipped { tool, version, .. } => format!("skipped {tool}@{version}"),
            ToolProgress::Installed { tool, version, .. } => {
                format!("installed {tool}@{version}")
            }
            ToolProgress::Failed { tool, version, .. } => format!("failed {tool}@{version}"),
        };
        sink.lock().unwrap().push(line);
    };
    (events, record)
}

#[tokio::test]
async fn installs_in_order_idempotently_and_reports_failures_with_output() {
    let files = tempfile::tempdir().unwrap();
    tool_tarball(files.path(), "hello", "1.0.0");
    tool_tarball(files.path(), "hello", "2.0.0");
    tool_tarball(files.path(), "hello-dep", "1.0.0");
    let server = FileServer::start(
        files.path().to_path_buf(),
        std::net::Ipv4Addr::LOCALHOST.into(),
    );
    let sources = ToolSources::new().with("fixture", server.url()).unwrap();
    let (_catalog_dir, catalog) = test_catalog();
    catalog.check_sources(&sources).unwrap();
    let sandbox = Sandbox::start("install").await;

    // First install: the requirement first, then the tool; both verified.
    let (events, record) = recorder();
    let outcomes = install(
        &sandbox.agent,
        &plan(&catalog, &["hello"], &sources),
        &record,
    )
    .await
    .unwrap();
    let statuses: Vec<_> = outcomes
        .iter()
        .map(|o| (o.tool.as_str(), o.version.as_str(), o.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("hello-dep", "1.0.0", ToolStatus::Installed),
            ("hello", "1.0.0", ToolStatus::Installed),
        ]
    );
    assert_eq!(
        *events.lock().unwrap(),
        [
            "started hello-dep@1.0.0",
            "installed hello-dep@1.0.0",
            "started hello@1.0.0",
            "installed hello@1.0.0",
        ]
    );
    assert_eq!(
        sandbox.sh("hello; hello-dep").await,
        "hello 1.0.0\nhello-dep 1.0.0\n"
    );
    assert_eq!(server.hits("/hello-1.0.0.tar.gz"), 1);
    assert_eq!(server.hits("/hello-dep-1.0.0.tar.gz"), 1);
    // The scratch directory went with the script.
    assert_eq!(sandbox.scratch_dirs().await, 0);

    // Again: verify passes, nothing is downloaded.
    let (events, record) = recorder();
    let outcomes = install(
        &sandbox.agent,
        &plan(&catalog, &["hello"], &sources),
        &record,
    )
    .await
    .unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| o.status == ToolStatus::AlreadyPresent)
    );
    assert_eq!(
        *events.lock().unwrap(),
        [
            "started hello-dep@1.0.0",
            "skipped hello-dep@1.0.0",
            "started hello@1.0.0",
            "skipped hello@1.0.0",
        ]
    );
    assert_eq!(server.hits("/hello-1.0.0.tar.gz"), 1);
    assert_eq!(server.hits("/hello-dep-1.0.0.tar.gz"), 1);

    // Another version replaces it; the requirement stays as it is.
    let outcomes = install(
        &sandbox.agent,
        &plan(&catalog, &["hello@2.0.0"], &sources),
        &recorder().1,
    )
    .await
    .unwrap();
    assert_eq!(outcomes[0].status, ToolStatus::AlreadyPresent);
    assert_eq!(outcomes[1].status, ToolStatus::Installed);
    assert_eq!(sandbox.sh("hello").await, "hello 2.0.0\n");

    // A version the mirror does not have: the 404 fails the install, with curl's
    // words in the error.
    let (events, record) = recorder();
    let err = install(
        &sandbox.agent,
        &plan(&catalog, &["hello@9.9.9"], &sources),
        &record,
    )
    .await
    .unwrap_err();
    match &err {
        ToolError::Failed {
            tool,
            version,
            exit_code,
            output,
        } => {
            assert_eq!((tool.as_str(), version.as_str()), ("hello", "9.9.9"));
            assert_eq!(*exit_code, Some(22), "curl -f exits 22 on HTTP errors");
            assert!(output.contains("404"), "{output}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(err.to_string().contains("hello@9.9.9"), "{err}");
    assert_eq!(server.hits("/hello-9.9.9.tar.gz"), 1);
    assert_eq!(
        events.lock().unwrap().last().map(String::as_str),
        Some("failed hello@9.9.9")
    );
    // The earlier version is still there.
    assert_eq!(sandbox.sh("hello").await, "hello 2.0.0\n");

    // A download that is not what its publisher listed (a tampered or corrupted
    // file on the mirror) is refused before it is unpacked.
    tool_tarball(files.path(), "hello", "3.0.0");
    let tampered = files.path().join("hello-3.0.0.tar.gz");
    let mut bytes = std::fs::read(&tampered).unwrap();
    bytes.extend_from_slice(b"tampered");
    std::fs::write(&tampered, bytes).unwrap();
    let err = refused(&sandbox, &plan(&catalog, &["hello@3.0.0"], &sources)).await;
    assert!(
        err.contains("checksum mismatch for hello-3.0.0.tar.gz: expected sha256 "),
        "{err}"
    );
    assert_eq!(server.hits("/hello-3.0.0.tar.gz"), 1);
    assert_eq!(sandbox.sh("hello").await, "hello 2.0.0\n");
    // A file its sums file does not list.
    let unlisted = files.path().join("hello-4.0.0.tar.gz");
    std::fs::copy(files.path().join("hello-2.0.0.tar.gz"), &unlisted).unwrap();
    let err = refused(&sandbox, &plan(&catalog, &["hello@4.0.0"], &sources)).await;
    assert!(
        err.contains("SHA256SUMS does not list hello-4.0.0.tar.gz"),
        "{err}"
    );
    // A mirror without sums files.
    std::fs::remove_file(files.path().join("SHA256SUMS")).unwrap();
    let err = refused(&sandbox, &plan(&catalog, &["hello@1.0.0"], &sources)).await;
    assert!(
        err.contains("cannot download the checksums of hello-1.0.0.tar.gz"),
        "{err}"
    );
    assert_eq!(sandbox.sh("hello").await, "hello 2.0.0\n");
    // No scratch files were left by any of them.
    assert_eq!(sandbox.scratch_dirs().await, 0);
}

#[tokio::test]
async fn a_recipe_past_its_timeout_is_killed() {
    let (_catalog_dir, catalog) = test_catalog();
    let sandbox = Sandbox::start("timeout").await;
    let started = std::time::Instant::now();
    let (events, record) = recorder();
    let err = install(
        &sandbox.agent,
        &plan(&catalog, &["slow"], &ToolSources::new()),
        &record,
    )
    .await
    .unwrap_err();
    match &err {
        ToolError::TimedOut {
            tool,
            timeout,
            output,
            ..
        } => {
            assert_eq!(tool, "slow");
            assert_eq!(*timeout, Duration::from_secs(2));
            assert!(output.contains("about to sleep"), "{output}");
        }
        other => panic!("expected TimedOut, got {other:?}"),
    }
    assert!(err.to_string().contains("timed out after 2s"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(
        events.lock().unwrap().last().map(String::as_str),
        Some("failed slow@1")
    );
    // Nothing of it runs any more, and its scratch directory is gone (SIGTERM ran
    // the prelude's trap).
    let processes = sandbox
        .sh("for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < \"$f\"; echo; done")
        .await;
    assert!(
        !processes.lines().any(|l| l.trim() == "sleep 4321"),
        "{processes}"
    );
    assert_eq!(sandbox.scratch_dirs().await, 0);
}

#[test]
fn unknown_tools_are_refused_naming_the_known_ones() {
    let (_catalog_dir, catalog) = test_catalog();
    let err = catalog
        .plan(
            &["helo@1.0.0".parse().unwrap()],
            &ToolSources::new(),
            Arch::X86_64,
        )
        .unwrap_err();
    assert!(matches!(err, ToolError::UnknownTool { .. }));
    let message = err.to_string();
    assert!(message.contains("\"helo\""), "{message}");
    for known in ["hello", "hello-dep", "slow", "nodejs", "claude-code", "git"] {
        assert!(message.contains(known), "{message}");
    }
}

/// `archive` (a .tar.gz) holding `files` (path → content; all executable), plus
/// the empty directories `dirs`.
fn build_tree(archive: &Path, files: &[(&str, &str)], dirs: &[&str]) {
    use std::os::unix::fs::PermissionsExt as _;
    let staging = tempfile::tempdir().unwrap();
    for dir in dirs {
        std::fs::create_dir_all(staging.path().join(dir)).unwrap();
    }
    for (path, content) in files {
        let path = staging.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::create_dir_all(archive.parent().unwrap()).unwrap();
    let status = std::process::Command::new("tar")
        .arg("-czf")
        .arg(archive)
        .arg("-C")
        .arg(staging.path())
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
}

/// The built-in nodejs, claude-code, go, uv recipes, their downloads pointed at the
/// fixture server through mirror overrides: stand-in archives laid out like the
/// real ones (node's tarball with a fake npm that records its arguments).
#[tokio::test]
async fn builtin_recipes_install_from_mirrors() {
    let arch = Arch::host().unwrap();
    let node = arch.variant("node").unwrap();
    let debian = arch.variant("debian").unwrap();
    let uname = arch.uname();
    let files = tempfile::tempdir().unwrap();
    let root = files.path();
    let node_dir = format!("node-v22.12.0-linux-{node}");
    let fake_npm = "#!/bin/sh\n\
        echo \"$@\" > /usr/local/npm-args\n\
        printf '#!/bin/sh\\necho \"2.0.1 (Claude Code)\"\\n' > /usr/local/bin/claude\n\
        chmod 755 /usr/local/bin/claude\n";
    build_tree(
        &root.join(format!("node/v22.12.0/{node_dir}.tar.gz")),
        &[
            (
                &format!("{node_dir}/bin/node"),
                "#!/bin/sh\necho v22.12.0\n",
            ),
            (&format!("{node_dir}/bin/npm"), fake_npm),
        ],
        &[
            &format!("{node_dir}/include/node"),
            &format!("{node_dir}/lib/node_modules"),
            &format!("{node_dir}/share/doc"),
        ],
    );
    append_sha256(
        &root.join(format!("node/v22.12.0/{node_dir}.tar.gz")),
        &root.join("node/v22.12.0/SHASUMS256.txt"),
    );
    // Go's .sha256 holds the sum alone; uv's "<sum> *<name>".
    for version in ["1.24.0", "1.25.4"] {
        let go_tarball = root.join(format!("go/go{version}.linux-{debian}.tar.gz"));
        build_tree(
            &go_tarball,
            &[
                (
                    "go/bin/go",
                    &format!("#!/bin/sh\necho \"go version go{version} linux/$(uname -m)\"\n"),
                ),
                ("go/bin/gofmt", "#!/bin/sh\n"),
            ],
            &[],
        );
        let sums = go_tarball.with_extension("gz.sha256");
        append_sha256(&go_tarball, &sums);
        let line = std::fs::read_to_string(&sums).unwrap();
        std::fs::write(&sums, line.split_whitespace().next().unwrap()).unwrap();
    }
    let uv_dir = format!("uv-{uname}-unknown-linux-gnu");
    build_tree(
        &root.join(format!("uv/0.9.11/{uv_dir}.tar.gz")),
        &[
            (
                &format!("{uv_dir}/uv"),
                "#!/bin/sh\necho 'uv 0.9.11 (stand-in)'\n",
            ),
            (&format!("{uv_dir}/uvx"), "#!/bin/sh\n"),
        ],
        &[],
    );
    let uv_tarball = root.join(format!("uv/0.9.11/{uv_dir}.tar.gz"));
    let uv_sums = uv_tarball.with_extension("gz.sha256");
    append_sha256(&uv_tarball, &uv_sums);
    let line = std::fs::read_to_string(&uv_sums).unwrap();
    std::fs::write(&uv_sums, line.replace("  ", " *")).unwrap();
    let server = FileServer::start(root.to_path_buf(), std::net::Ipv4Addr::LOCALHOST.into());
    let mut sources = ToolSources::new();
    for (mirror, path) in [
        ("nodejs", "node"),
        ("go", "go"),
        ("uv", "uv"),
        ("npm", "npm"),
    ] {
        sources
            .insert(mirror, format!("{}/{path}/", server.url()))
            .unwrap();
    }
    let catalog = Catalog::builtin().unwrap();
    catalog.check_sources(&sources).unwrap();
    let sandbox = Sandbox::start("builtin").await;

    let specs = ["claude-code", "nodejs@22.12.0", "go@1.24.0", "uv@0.9.11"];
    let outcomes = install(
        &sandbox.agent,
        &plan(&catalog, &specs, &sources),
        &recorder().1,
    )
    .await
    .unwrap();
    let installed: Vec<_> = outcomes
        .iter()
        .map(|o| (o.tool.as_str(), o.version.as_str(), o.status))
        .collect();
    assert_eq!(
        installed,
        [
            ("nodejs", "22.12.0", ToolStatus::Installed),
            ("claude-code", "latest", ToolStatus::Installed),
            ("go", "1.24.0", ToolStatus::Installed),
            ("uv", "0.9.11", ToolStatus::Installed),
        ]
    );
    assert_eq!(
        sandbox
            .sh("node --version; claude --version; go version | cut -d' ' -f3; uv --version; ls /usr/local/bin")
            .await,
        "v22.12.0\n2.0.1 (Claude Code)\ngo1.24.0\nuv 0.9.11 (stand-in)\n\
         claude\ngo\ngofmt\nnode\nnpm\nuv\nuvx\n"
    );
    assert_eq!(
        sandbox.sh("cat /usr/local/npm-args").await,
        format!(
            "install --global --no-fund --no-audit --registry {}/npm @anthropic-ai/claude-code@latest\n",
            server.url()
        )
    );
    let again = install(
        &sandbox.agent,
        &plan(&catalog, &specs, &sources),
        &recorder().1,
    )
    .await
    .unwrap();
    assert!(again.iter().all(|o| o.status == ToolStatus::AlreadyPresent));

    // The default version's sum is pinned in the recipe: a mirror serving another
    // file for it is refused, though its own .sha256 agrees with that file.
    let err = refused(&sandbox, &plan(&catalog, &["go@1.25.4"], &sources)).await;
    let pinned = &catalog.get("go").unwrap().sha256[&format!("tarball@1.25.4/{uname}")];
    assert!(
        err.contains(&format!(
            "checksum mismatch for go1.25.4.linux-{debian}.tar.gz: expected sha256 {pinned}, got "
        )),
        "{err}"
    );
    assert_eq!(
        server.hits(&format!("/go/go1.25.4.linux-{debian}.tar.gz.sha256")),
        0
    );
    assert_eq!(sandbox.sh("go version | cut -d' ' -f3").await, "go1.24.0\n");
}

/// Removes a test image by its tag when the test ends, whatever happens.
struct ImageGuard(String);

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rmi", "-f", &self.0])
            .output();
    }
}

#[tokio::test]
async fn bake_installs_tools_once_into_an_image() {
    let files = tempfile::tempdir().unwrap();
    tool_tarball(files.path(), "hello", "1.0.0");
    tool_tarball(files.path(), "hello-dep", "1.0.0");
    let server = FileServer::start(
        files.path().to_path_buf(),
        std::net::Ipv4Addr::LOCALHOST.into(),
    );
    let sources = ToolSources::new().with("fixture", server.url()).unwrap();
    let (_catalog_dir, catalog) = test_catalog();
    let plan = plan(&catalog, &["hello"], &sources);
    let run_dir = tempfile::tempdir().unwrap();
    let docker = DockerBackend::connect(DockerBackendConfig {
        host: "unix:///var/run/docker.sock".into(),
        worker_id: format!("test-bake-{}", std::process::id()),
        installation_id: "test-installation".into(),
        agent_path: static_agent_bin(),
        socket_dir: run_dir.path().to_path_buf(),
        pids_limit: 512,
        network_mode: "host".into(),
        egress_allow: Vec::new(),
        dns_upstream: aetherium_core::net::dns::host_resolvers(),
    })
    .unwrap();
    let tag = format!(
        "aetherium-test/baked:{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let _image = ImageGuard(tag.clone());
    let (events, record) = recorder();
    let baked = aetherium_core::tools::bake(&docker, &test_image(), &tag, &plan, &record)
        .await
        .unwrap();
    assert!(baked.image_id.starts_with("sha256:"), "{baked:?}");
    assert_eq!(baked.tools.len(), 2, "{baked:?}");
    assert!(
        events
            .lock()
            .unwrap()
            .contains(&"installed hello@1.0.0".to_string())
    );
    // The bake container is gone.
    let left = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!(
            "label=io.aetherium.worker_id=test-bake-{}",
            std::process::id()
        ))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&left.stdout).trim().is_empty());
    // It keeps the source image's command, not our agent's.
    let cmd = std::process::Command::new("docker")
        .args([
            "image",
            "inspect",
            "-f",
            "{{json .Config.Entrypoint}} {{json .Config.Cmd}}",
            &tag,
        ])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&cmd.stdout).contains("aetherium-agent"));

    // A sandbox of the baked image has the tools: nothing is downloaded again.
    let hits = server.hits("/hello-1.0.0.tar.gz");
    let sandbox = Sandbox::start_from("baked", &tag).await;
    assert_eq!(sandbox.sh("hello").await, "hello 1.0.0\n");
    let outcomes = install(&sandbox.agent, &plan, &|_| {}).await.unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| o.status == ToolStatus::AlreadyPresent),
        "{outcomes:?}"
    );
    assert_eq!(server.hits("/hello-1.0.0.tar.gz"), hits);

    // A failing install commits nothing and leaves no container.
    let broken = plan_of(&catalog, "hello@9.9.9", &sources);
    let failed_tag = format!("{tag}-failed");
    let err = aetherium_core::tools::bake(&docker, &test_image(), &failed_tag, &broken, &|_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("hello"), "{err}");
    let exists = std::process::Command::new("docker")
        .args(["image", "inspect", &failed_tag])
        .output()
        .unwrap();
    assert!(!exists.status.success(), "{failed_tag} was committed");
}

fn plan_of(catalog: &Catalog, spec: &str, sources: &ToolSources) -> InstallPlan {
    plan(catalog, &[spec], sources)
}
