use super::*;

fn full_request() -> CreateEnvironmentRequest {
    serde_json::from_value(serde_json::json!({
        "name": "py-agent",
        "description": "python agent",
        "vcpus": 2,
        "memory_mb": 1024,
        "git_repo_url": "https://example.com/org/repo.git",
        "git_branch": "feature/x-1",
        "working_directory": "/workspace/repo",
        "tools": ["git", "nodejs@20", "python@3.11.4"],
        "env_vars": {"FOO_BAR": "1", "_X": "y"},
        "mcp_servers": [
            {"name": "fs", "type": "stdio", "command": "mcp-fs", "args": ["/workspace"]},
            {"name": "web", "type": "http", "url": "http://127.0.0.1:9/mcp",
             "headers": {"X-Team": "a"}}
        ],
        "idle_timeout_seconds": 0
    }))
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn defaults_and_a_full_request_are_valid() {
    let minimal: CreateEnvironmentRequest =
        serde_json::from_str(r#"{"name": "e1"}"#).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(minimal, CreateEnvironmentRequest::named("e1"));
    assert_eq!(minimal.idle_timeout_seconds, 1800);
    assert_eq!(minimal.working_directory, "/workspace");
    assert_eq!(minimal.validate(), Ok(()));
    assert_eq!(full_request().validate(), Ok(()));
    let json =
        serde_json::to_value(&full_request().mcp_servers[0]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json["type"], "stdio");
}

#[test]
fn unknown_fields_are_refused() {
    let r: Result<CreateEnvironmentRequest, _> =
        serde_json::from_str(r#"{"name": "e1", "toolz": []}"#);
    assert!(r.is_err());
    let r: Result<AddSecretRequest, _> =
        serde_json::from_str(r#"{"name": "A", "value": "v", "scop": "global"}"#);
    assert!(r.is_err());
}

#[test]
fn bad_fields_say_what_is_wrong() {
    type Mutation = Box<dyn Fn(&mut CreateEnvironmentRequest)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (Box::new(|r| r.name = "-bad".into()), "name"),
        (Box::new(|r| r.vcpus = 0), "vcpus"),
        (Box::new(|r| r.memory_mb = 64), "memory_mb"),
        (
            Box::new(|r| r.git_repo_url = Some("ftp://x/y".into())),
            "git_repo_url",
        ),
        (
            Box::new(|r| r.git_repo_url = Some("https://u:tok@github.com/a/b".into())),
            "secret",
        ),
        (
            Box::new(|r| r.git_repo_url = Some("--upload-pack=x".into())),
            "git_repo_url",
        ),
        (
            Box::new(|r| r.git_branch = Some("a..b".into())),
            "git_branch",
        ),
        (Box::new(|r| r.git_branch = Some("-f".into())), "git_branch"),
        (
            Box::new(|r| r.working_directory = "rel/dir".into()),
            "absolute",
        ),
        (Box::new(|r| r.working_directory = "/a/../b".into()), ".."),
        (Box::new(|r| r.tools = vec!["Node".into()]), "tool"),
        (Box::new(|r| r.tools = vec!["node@".into()]), "tool"),
        (
            Box::new(|r| r.tools = vec!["go@1".into(), "go@2".into()]),
            "twice",
        ),
        (
            Box::new(|r| {
                r.env_vars.insert("1X".into(), "v".into());
            }),
            "environment variable",
        ),
        (
            Box::new(|r| r.idle_timeout_seconds = 59),
            "idle_timeout_seconds",
        ),
        (
            Box::new(|r| r.idle_timeout_seconds = 7 * 24 * 3600 + 1),
            "idle_timeout_seconds",
        ),
        (
            Box::new(|r| r.mcp_servers[0].command = None),
            "needs a command",
        ),
        (Box::new(|r| r.mcp_servers[1].url = None), "needs a url"),
        (Box::new(|r| r.image = Some("a b".into())), "image"),
    ];
    for (i, (mutate, expected)) in cases.iter().enumerate() {
        let mut r = full_request();
        mutate(&mut r);
        let err = r.validate().expect_err(&format!("case {i} should fail"));
        assert!(
            err.contains(expected),
            "case {i}: {err:?} lacks {expected:?}"
        );
    }
}

#[test]
fn git_urls_of_every_supported_form_pass() {
    for url in [
        "https://github.com/a/b.git",
        "http://127.0.0.1:8080/r.git",
        "ssh://git@host:22/r.git",
        "git@github.com:a/b.git",
        "file:///tmp/repo",
    ] {
        assert_eq!(validate_git_url("url", url), Ok(()), "{url}");
    }
    for url in [
        "",
        "file://relative",
        "github.com/a/b",
        "git@:x",
        "https://",
    ] {
        assert!(validate_git_url("url", url).is_err(), "{url}");
    }
}

#[test]
fn updates_apply_and_clear() {
    let mut env = full_request().into_environment("id".into(), chrono::Utc::now());
    let update: UpdateEnvironmentRequest = serde_json::from_value(serde_json::json!({
        "git_branch": "", "vcpus": 4, "tools": ["bun"]
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(update.validate(), Ok(()));
    update.apply_to(&mut env, chrono::Utc::now());
    assert_eq!(env.git_branch, None);
    assert_eq!(env.vcpus, 4);
    assert_eq!(env.tools, vec!["bun".to_string()]);
    assert!(
        UpdateEnvironmentRequest {
            memory_mb: Some(1),
            ..Default::default()
        }
        .validate()
        .is_err()
    );
}

#[test]
fn secret_requests_are_checked_and_never_print_their_value() {
    let r: AddSecretRequest = serde_json::from_str(
        r#"{"name": "GITHUB_TOKEN", "value": "s3cr3t-value", "type": "token", "scope": "global"}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.validate(), Ok(()));
    assert_eq!(r.secret_type, SecretType::Token);
    assert_eq!(r.scope, Some(SecretScope::Global));
    let shown = format!("{r:?} {r:#?}");
    assert!(!shown.contains("s3cr3t-value"), "{shown}");

    let mut bad = r.clone();
    bad.name = "my-token".into();
    assert!(bad.validate().is_err_and(|e| !e.contains("s3cr3t")));
    bad = r.clone();
    bad.value = String::new();
    assert!(bad.validate().is_err());
    bad.value = "x".repeat(MAX_SECRET_VALUE_LEN + 1);
    assert!(bad.validate().is_err());
    bad.value = "x".repeat(MAX_SECRET_VALUE_LEN);
    assert_eq!(bad.validate(), Ok(()));

    let defaults: AddSecretRequest =
        serde_json::from_str(r#"{"name": "A", "value": "v"}"#).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(defaults.secret_type, SecretType::Other);
    assert_eq!(defaults.scope, None);
    assert_eq!("ssh_key".parse::<SecretType>(), Ok(SecretType::SshKey));
    assert!("nope".parse::<SecretScope>().is_err());
}
