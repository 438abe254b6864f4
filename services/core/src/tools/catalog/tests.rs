use super::*;

fn catalog() -> Catalog {
    Catalog::builtin().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_builtin_file_is_embedded_parses_and_renders() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/catalog");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let catalog = catalog();
    assert_eq!(catalog.names(), on_disk, "every catalog file is in BUILTIN");
    for wanted in [
        "git",
        "nodejs",
        "bun",
        "python",
        "go",
        "rust",
        "claude-code",
        "ampcode",
        "docker",
    ] {
        assert!(catalog.get(wanted).is_some(), "{wanted} is in the catalog");
    }
    for recipe in catalog.recipes() {
        let spec = ToolSpec {
            name: recipe.name.clone(),
            version: None,
        };
        let plan = catalog
            .plan(&[spec], &ToolSources::new(), Arch::X86_64)
            .unwrap_or_else(|e| panic!("{}: {e}", recipe.name));
        let tool = plan.tools().last().unwrap();
        assert_eq!(
            (tool.name.as_str(), tool.version.as_str()),
            (recipe.name.as_str(), recipe.default_version.as_str())
        );
        assert!(tool.requested);
        for script in [tool.verify_script(), tool.install_script()] {
            assert!(!script.contains("{version}") && !script.contains("{mirror."));
            assert!(!script.contains("{source.") && !script.contains("{arch"));
        }
        // Downloads are rendered against their mirror's default.
        for (name, url) in &recipe.mirrors {
            if recipe
                .sources
                .values()
                .any(|s| s.contains(&format!("{{mirror.{name}}}")))
            {
                assert!(
                    tool.install_script().contains(url.as_str()),
                    "{}",
                    recipe.name
                );
            }
        }
    }
}

#[test]
fn templates_render_versions_arches_and_mirrors() {
    let catalog = catalog();
    let sources = ToolSources::new()
        .with("nodejs", "http://10.0.0.1:8080/node/")
        .unwrap();
    let plan = catalog
        .plan(&["nodejs@22.12.0".parse().unwrap()], &sources, Arch::X86_64)
        .unwrap();
    let node = &plan.tools()[0];
    assert!(
        node.install_script()
            .contains("\"http://10.0.0.1:8080/node/v22.12.0/node-v22.12.0-linux-x64.tar.gz\""),
        "{}",
        node.install_script()
    );
    assert!(node.verify_script().contains("\"v22.12.0\""));
    let plan = catalog
        .plan(&["go".parse().unwrap()], &ToolSources::new(), Arch::Aarch64)
        .unwrap();
    let go = catalog.get("go").unwrap();
    assert!(plan.tools()[0].install_script().contains(&format!(
        "https://dl.google.com/go/go{}.linux-arm64.tar.gz",
        go.default_version
    )));
}

#[test]
fn requirements_come_first_and_requested_versions_win() {
    let catalog = catalog();
    let plan = catalog
        .plan(
            &[
                "claude-code".parse().unwrap(),
                "git".parse().unwrap(),
                "nodejs@20.18.1".parse().unwrap(),
                "python".parse().unwrap(),
                "ampcode".parse().unwrap(),
            ],
            &ToolSources::new(),
            Arch::X86_64,
        )
        .unwrap();
    let order: Vec<(&str, &str, bool)> = plan
        .tools()
        .iter()
        .map(|t| (t.name.as_str(), t.version.as_str(), t.requested))
        .collect();
    let uv = &catalog.get("uv").unwrap().default_version;
    assert_eq!(
        order,
        [
            ("nodejs", "20.18.1", true),
            ("claude-code", "latest", true),
            ("git", "latest", true),
            ("uv", uv.as_str(), false),
            ("python", "3.13", true),
            ("ampcode", "latest", true),
        ]
    );
}

#[test]
fn dependency_order_rejects_cycles() {
    let graph: BTreeMap<&str, Vec<&str>> = BTreeMap::from([
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["e", "f"]),
        ("e", vec!["f"]),
        ("f", vec![]),
    ]);
    assert_eq!(dependency_order(&["d"], &graph).unwrap(), ["f", "e", "d"]);
    assert_eq!(
        dependency_order(&["d", "b"], &graph).unwrap_err(),
        ["b", "c", "a", "b"]
    );
    let err = ToolError::Cycle {
        cycle: dependency_order(&["a"], &graph).unwrap_err(),
    };
    assert_eq!(
        err.to_string(),
        "tool requirements form a cycle: a → b → c → a"
    );
}

#[test]
fn catalog_rejects_cycles_unknown_requirements_and_misnamed_files() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = |name: &str, requires: &str| {
        format!(
            "name = \"{name}\"\ndescription = \"x\"\ndefault_version = \"1\"\nrequires = [{requires}]\nverify = \"true\"\ninstall = \"true\"\n"
        )
    };
    std::fs::write(dir.path().join("a.toml"), recipe("a", "\"b\"")).unwrap();
    std::fs::write(dir.path().join("b.toml"), recipe("b", "\"a\"")).unwrap();
    assert!(matches!(
        Catalog::load(Some(dir.path())),
        Err(ToolError::Cycle { .. })
    ));
    std::fs::write(dir.path().join("b.toml"), recipe("b", "\"zzz\"")).unwrap();
    let err = Catalog::load(Some(dir.path())).unwrap_err().to_string();
    assert!(err.contains("requires unknown tool \"zzz\""), "{err}");
    std::fs::write(dir.path().join("b.toml"), recipe("c", "")).unwrap();
    let err = Catalog::load(Some(dir.path())).unwrap_err().to_string();
    assert!(err.contains("must be named c.toml"), "{err}");
    std::fs::write(
        dir.path().join("b.toml"),
        recipe("b", "").replace("install = \"true\"", "install = \"echo {verison}\""),
    )
    .unwrap();
    let err = Catalog::load(Some(dir.path())).unwrap_err().to_string();
    assert!(err.contains("unknown placeholder {verison}"), "{err}");
    std::fs::write(dir.path().join("b.toml"), recipe("b", "") + "colour = 1\n").unwrap();
    let err = Catalog::load(Some(dir.path())).unwrap_err().to_string();
    assert!(err.contains("colour"), "{err}");
}

#[test]
fn unknown_tools_and_bad_requests_are_input_errors() {
    let catalog = catalog();
    let err = catalog
        .plan(
            &["nodjs".parse().unwrap()],
            &ToolSources::new(),
            Arch::X86_64,
        )
        .unwrap_err();
    assert!(matches!(err, ToolError::UnknownTool { .. }));
    let message = err.to_string();
    assert!(message.starts_with("unknown tool \"nodjs\": known tools are "));
    assert!(message.contains("nodejs") && message.contains("claude-code"));
    let err = catalog
        .plan(
            &["go@1.22.0".parse().unwrap(), "go@1.23.0".parse().unwrap()],
            &ToolSources::new(),
            Arch::X86_64,
        )
        .unwrap_err();
    assert!(matches!(err, ToolError::InvalidSpec { .. }), "{err}");
}

#[test]
fn every_download_has_a_checksum_pinned_for_defaults_else_a_sums_file() {
    let catalog = catalog();
    let sources = ToolSources::new()
        .with("go", "http://10.0.0.1:8080/go/")
        .unwrap();
    let go = |version: &str, arch| {
        let plan = catalog
            .plan(&[format!("go@{version}").parse().unwrap()], &sources, arch)
            .unwrap();
        plan.tools()[0].downloads().clone()
    };
    // The default version: the pinned sum, whatever the mirror.
    assert_eq!(
        go("1.25.4", Arch::X86_64),
        BTreeMap::from([(
            "http://10.0.0.1:8080/go/go1.25.4.linux-amd64.tar.gz".to_string(),
            DownloadCheck::Pinned(
                "9fa5ffeda4170de60f67f3aa0f824e426421ba724c21e133c1e35d6159ca1bec".into()
            )
        )])
    );
    assert!(matches!(
        go("1.25.4", Arch::Aarch64).values().next(),
        Some(DownloadCheck::Pinned(sum)) if sum.starts_with("a68e86d4")
    ));
    // Another version: the sums file its publisher puts next to it.
    assert_eq!(
        go("1.24.0", Arch::X86_64),
        BTreeMap::from([(
            "http://10.0.0.1:8080/go/go1.24.0.linux-amd64.tar.gz".to_string(),
            DownloadCheck::SumsFile(
                "http://10.0.0.1:8080/go/go1.24.0.linux-amd64.tar.gz.sha256".into()
            )
        )])
    );
    // Every built-in download is covered, and `fetch` is given the answer.
    for recipe in catalog.recipes() {
        let plan = catalog
            .plan(
                &[recipe.name.parse().unwrap()],
                &ToolSources::new(),
                Arch::X86_64,
            )
            .unwrap();
        let tool = plan.tools().last().unwrap();
        assert_eq!(
            tool.downloads().len(),
            recipe.sources.len(),
            "{}",
            recipe.name
        );
        let function = tool.expected_sha256_function();
        for (url, check) in tool.downloads() {
            assert!(tool.install_script().contains(url.as_str()), "{url}");
            let answer = match check {
                DownloadCheck::Pinned(sum) => format!("\"{url}\") echo \"sha256 {sum}\""),
                DownloadCheck::SumsFile(sums) => format!("\"{url}\") echo \"sums {sums}\""),
            };
            assert!(function.contains(&answer), "{function}");
        }
        assert!(function.contains("*) echo none ;;"), "{function}");
    }
}

#[test]
fn recipes_with_unverifiable_downloads_or_bad_pins_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = |extra: &str| {
        format!(
            "name = \"t\"\ndescription = \"x\"\ndefault_version = \"1.0\"\nverify = \"true\"\ninstall = 'fetch \"{{source.file}}\" \"$WORK/f\"'\n\
                 [sources]\nfile = \"{{mirror.t}}/t-{{version}}.tgz\"\n[mirrors]\nt = \"https://t.example\"\n{extra}"
        )
    };
    let load = |text: String| {
        std::fs::write(dir.path().join("t.toml"), text).unwrap();
        Catalog::load(Some(dir.path())).map(|_| ())
    };
    let err = load(recipe("")).unwrap_err().to_string();
    assert!(err.contains("source \"file\" has no checksum"), "{err}");
    let err = load(recipe("[checksums]\nfiles = \"{mirror.t}/SUMS\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"files\" is not one of the sources"), "{err}");
    let err = load(recipe("[sha256]\n\"file@1.0/x86_64\" = \"abc\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not 64 lowercase hex digits"), "{err}");
    let err = load(recipe(&format!(
        "[sha256]\n\"file@1.0/riscv64\" = \"{}\"\n",
        "a".repeat(64)
    )))
    .unwrap_err()
    .to_string();
    assert!(err.contains("arch x86_64 or aarch64"), "{err}");
    let err = load(recipe(
        "[checksums]\nfile = \"{mirror.t}/{verison}/SUMS\"\n",
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown placeholder {verison}"), "{err}");
    // Pinned for the default on both architectures and nothing else: other
    // versions cannot be checked, so they are refused before anything runs.
    let pins = format!(
        "[sha256]\n\"file@1.0/x86_64\" = \"{a}\"\n\"file@1.0/aarch64\" = \"{a}\"\n",
        a = "a".repeat(64)
    );
    std::fs::write(dir.path().join("t.toml"), recipe(&pins)).unwrap();
    let catalog = Catalog::load(Some(dir.path())).unwrap();
    catalog
        .plan(&["t".parse().unwrap()], &ToolSources::new(), Arch::X86_64)
        .unwrap();
    let err = catalog
        .plan(
            &["t@2.0".parse().unwrap()],
            &ToolSources::new(),
            Arch::X86_64,
        )
        .unwrap_err();
    assert!(matches!(err, ToolError::InvalidSpec { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("no checksum is known for this version on x86_64"),
        "{err}"
    );
}

#[test]
fn mirrors_are_checked_and_their_credentials_hidden() {
    let catalog = catalog();
    assert!(ToolSources::new().with("npm", "ftp://x").is_err());
    assert!(ToolSources::new().with("npm", "http://x/$(id)").is_err());
    assert!(ToolSources::new().with("npm", "http://x/a b").is_err());
    assert!(ToolSources::new().with("Bad Name", "http://x").is_err());
    let sources = ToolSources::new()
        .with("npm", "https://ci:s3cret-pw@npm.internal/")
        .unwrap();
    catalog.check_sources(&sources).unwrap();
    let debug = format!("{sources:?}");
    assert!(
        !debug.contains("s3cret-pw") && debug.contains("***@npm.internal"),
        "{debug}"
    );
    let plan = catalog
        .plan(&["ampcode".parse().unwrap()], &sources, Arch::X86_64)
        .unwrap();
    let amp = &plan.tools()[1];
    assert!(
        amp.install_script()
            .contains("\"https://ci:s3cret-pw@npm.internal\"")
    );
    assert!(amp.secrets.contains(&"s3cret-pw".to_string()));
    assert!(!format!("{amp:?}").contains("s3cret-pw"));

    let typo = ToolSources::new().with("nmp", "https://x").unwrap();
    let err = catalog.check_sources(&typo).unwrap_err().to_string();
    assert!(err.contains("\"nmp\"") && err.contains("npm"), "{err}");
    let map = BTreeMap::from([("npm".to_string(), "https://x/".to_string())]);
    let converted = ToolSources::try_from(map).unwrap();
    assert_eq!(converted.get("npm"), Some("https://x"));
    let map = BTreeMap::from([("npm".to_string(), "x".to_string())]);
    assert!(ToolSources::try_from(map).is_err());
    // Deserialized overrides are checked when used.
    let raw: ToolSources = serde_json::from_str(r#"{"npm": "not a url"}"#).unwrap();
    let err = catalog
        .plan(&["ampcode".parse().unwrap()], &raw, Arch::X86_64)
        .unwrap_err();
    assert!(matches!(err, ToolError::InvalidMirror { .. }), "{err}");
    assert!(!err.to_string().contains("not a url"));
}
