#![allow(clippy::unwrap_used)]

use super::*;
use serde_json::json;

#[test]
fn secrets_cannot_take_names_that_steer_every_process() {
    assert!(validate_secret_name("DEPLOY_TOKEN").is_ok());
    assert!(validate_secret_name("ld.config").is_ok());
    for reserved in [
        "LD_PRELOAD",
        "ld_library_path",
        "PATH",
        "BASH_ENV",
        "DYLD_INSERT_LIBRARIES",
        "Home",
    ] {
        let e = validate_secret_name(reserved).unwrap_err();
        assert!(e.contains("reserved"), "{reserved}: {e}");
    }
}

fn step(value: serde_json::Value) -> PrepStep {
    serde_json::from_value(value).unwrap()
}

#[test]
fn statuses_and_assistants_use_the_original_wire_names() {
    assert_eq!(
        serde_json::to_value(AiAssistant::ClaudeCode).unwrap(),
        json!("claude-code")
    );
    assert_eq!("ampcode".parse::<AiAssistant>(), Ok(AiAssistant::Ampcode));
    assert!("amp".parse::<AiAssistant>().is_err());
    for s in WorkspaceStatus::ALL {
        assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
        assert_eq!(s.as_str().parse::<WorkspaceStatus>(), Ok(s));
    }
    for s in PromptStatus::ALL {
        assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
    }
    for s in PrepStepStatus::ALL {
        assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
    }
    for t in PrepStepType::ALL {
        assert_eq!(serde_json::to_value(t).unwrap(), json!(t.as_str()));
    }
    for t in WorkspaceSecretType::ALL {
        assert_eq!(serde_json::to_value(t).unwrap(), json!(t.as_str()));
    }
}

#[test]
fn prep_steps_are_checked_per_type() {
    let ok = [
        json!({"type": "git_clone", "order": 1, "config": {"url": "https://example.com/r.git"}}),
        json!({"type": "git_clone", "config": {"url": "git@github.com:a/b.git",
                   "branch": "feature/x-1", "directory": "src", "ssh_key_secret": "deploy_key"}}),
        json!({"type": "git_clone", "config": {"url": "file:///srv/git/r.git"}}),
        json!({"type": "script", "config": {"script": "make deps", "timeout_seconds": 60}}),
        json!({"type": "env_var", "config": {"name": "RUST_LOG", "value": ""}}),
    ];
    for v in ok {
        assert_eq!(step(v.clone()).validate(), Ok(()), "{v}");
    }
    let bad = [
        (
            json!({"type": "git_clone", "config": {}}),
            "missing field `url`",
        ),
        (
            json!({"type": "git_clone", "config": {"url": "ftp://x/y"}}),
            "must start with",
        ),
        (
            json!({"type": "git_clone", "config": {"url": "git@host"}}),
            "must start with",
        ),
        (
            json!({"type": "git_clone", "config": {"url": "https://x/ y"}}),
            "spaces",
        ),
        // The one rule for git URLs: a token in the URL would be stored in clear.
        (
            json!({"type": "git_clone", "config": {"url": "https://user:ghp_token@x/y.git"}}),
            "must not carry a password or token",
        ),
        (
            json!({"type": "git_clone", "config": {"url": "https://x/y", "branch": "main.lock"}}),
            "not a valid branch",
        ),
        (
            json!({"type": "git_clone", "config": {"url": "https://x/y", "branch": "--upload-pack=x"}}),
            "branch",
        ),
        (
            json!({"type": "git_clone", "config": {"url": "https://x/y", "ssh_key_secret": "a b"}}),
            "ssh_key_secret",
        ),
        (
            json!({"type": "git_clone", "config": {"url": "https://x/y", "depth": 1}}),
            "unknown field `depth`",
        ),
        (
            json!({"type": "script", "config": {"script": "  "}}),
            "must not be empty",
        ),
        (
            json!({"type": "script", "config": {"script": "x".repeat(MAX_SCRIPT_BYTES + 1)}}),
            "at most",
        ),
        (
            json!({"type": "script", "config": {"script": "ls", "timeout_seconds": 0}}),
            "timeout_seconds",
        ),
        (
            json!({"type": "env_var", "config": {"name": "1X", "value": "v"}}),
            "not a valid environment variable name",
        ),
        (
            json!({"type": "env_var", "config": {"name": "X"}}),
            "missing field `value`",
        ),
    ];
    for (v, want) in bad {
        let err = step(v.clone()).validate().unwrap_err();
        assert!(err.contains(want), "{v}: {err}");
        assert!(err.starts_with("prep step"), "{err}");
    }
    assert!(serde_json::from_value::<PrepStep>(json!({"type": "docker"})).is_err());
    assert!(serde_json::from_value::<PrepStep>(json!({"type": "script", "extra": 1})).is_err());
}

#[test]
fn create_requests_take_the_originals_fields_and_defaults() {
    let req: CreateWorkspaceRequest = serde_json::from_value(json!({
        "name": "ws-1",
        "ai_assistant": "ampcode",
        "secrets": [{"name": "GH_TOKEN", "value": "s3cr3t-value", "type": "token"}],
        "prep_steps": [
            {"type": "script", "order": 2, "config": {"script": "ls"}},
            {"type": "git_clone", "order": 1, "config": {"url": "https://x/r.git"}}
        ],
        "additional_tools": ["nodejs@20", "git"],
        "tool_versions": {"go": "1.22.3"}
    }))
    .unwrap();
    assert_eq!(req.validate(), Ok(()));
    assert_eq!(req.working_directory, "/workspace");
    assert_eq!(req.ai_assistant, AiAssistant::Ampcode);
    let orders: Vec<u32> = req.ordered_prep_steps().iter().map(|s| s.order).collect();
    assert_eq!(orders, vec![1, 2]);
    assert_eq!(CreateWorkspaceRequest::named("a").validate(), Ok(()));

    let debug = format!("{req:?}");
    assert!(!debug.contains("s3cr3t-value"), "{debug}");
    assert!(debug.contains("GH_TOKEN"));

    let invalid = |edit: fn(&mut CreateWorkspaceRequest), want: &str| {
        let mut r = req.clone();
        edit(&mut r);
        let err = r.validate().unwrap_err();
        assert!(err.contains(want), "{err}");
        assert!(!err.contains("s3cr3t-value"));
    };
    invalid(|r| r.name = "-bad".into(), "name");
    invalid(|r| r.vcpus = Some(0), "vcpus");
    invalid(|r| r.memory_mb = Some(64), "memory_mb");
    invalid(|r| r.working_directory = "rel".into(), "absolute");
    invalid(|r| r.secrets[0].value.clear(), "GH_TOKEN");
    invalid(|r| r.secrets.push(r.secrets[0].clone()), "twice");
    invalid(|r| r.prep_steps[0].order = 1, "distinct");
    invalid(|r| r.additional_tools.push("bad tool".into()), "tool");
    invalid(
        |r| {
            r.tool_versions.insert("go".into(), "1 2".into());
        },
        "version",
    );
    assert!(
        serde_json::from_value::<CreateWorkspaceRequest>(json!({"name": "a", "nme": 1})).is_err()
    );
    assert!(
        serde_json::from_value::<CreateWorkspaceRequest>(
            json!({"name": "a", "ai_assistant": "copilot"})
        )
        .is_err()
    );
}

#[test]
fn prompt_requests_are_bounded() {
    let req: SubmitPromptRequest = serde_json::from_value(json!({"prompt": "fix it"})).unwrap();
    assert_eq!(req.priority, 5);
    assert_eq!(req.validate(), Ok(()));
    let mut r = req.clone();
    r.priority = 11;
    assert!(r.validate().unwrap_err().contains("priority"));
    let mut r = req.clone();
    r.prompt = " ".into();
    assert!(r.validate().unwrap_err().contains("empty"));
    let mut r = req.clone();
    r.prompt = "x".repeat(MAX_PROMPT_BYTES + 1);
    assert!(r.validate().unwrap_err().contains("at most"));
    r.prompt = "x".repeat(MAX_PROMPT_BYTES);
    assert_eq!(r.validate(), Ok(()));
    let mut r = req.clone();
    r.environment.insert("A=B".into(), "v".into());
    assert!(r.validate().is_err());
    let mut r = req;
    r.working_directory = Some("tmp".into());
    assert!(r.validate().is_err());
}

#[test]
fn session_messages_are_tagged_by_type() {
    let msg: SessionClientMessage =
        serde_json::from_value(json!({"type": "prompt", "prompt": "hi"})).unwrap();
    assert_eq!(
        msg,
        SessionClientMessage::Prompt {
            prompt: "hi".into(),
            priority: None
        }
    );
    assert_eq!(msg.validate(), Ok(()));
    let msg: SessionClientMessage =
        serde_json::from_value(json!({"type": "cancel", "prompt_id": "p1"})).unwrap();
    assert_eq!(
        msg,
        SessionClientMessage::Cancel {
            prompt_id: "p1".into()
        }
    );
    assert!(serde_json::from_value::<SessionClientMessage>(json!({"type": "exec"})).is_err());

    let out = SessionServerMessage::Output {
        prompt_id: "p1".into(),
        stream: SessionStream::Stderr,
        data: "x".into(),
    };
    assert_eq!(
        serde_json::to_value(&out).unwrap(),
        json!({"type": "output", "prompt_id": "p1", "stream": "stderr", "data": "x"})
    );
    assert_eq!(
        serde_json::to_value(SessionServerMessage::Status {
            workspace_status: WorkspaceStatus::Ready
        })
        .unwrap(),
        json!({"type": "status", "workspace_status": "ready"})
    );
    let p = Prompt::pending("w", &SubmitPromptRequest::new("go"), Utc::now());
    let done =
        serde_json::to_value(SessionServerMessage::PromptDone { prompt: p.clone() }).unwrap();
    assert_eq!(done["type"], "prompt_done");
    assert_eq!(done["prompt"]["id"], json!(p.id));
}

#[test]
fn output_is_capped_at_a_char_boundary_without_nul() {
    assert_eq!(cap_output("a\0b", 100), "a\u{FFFD}b");
    let long = "é".repeat(100);
    let capped = cap_output(&long, 51);
    assert!(capped.len() <= 51, "{}", capped.len());
    assert!(capped.ends_with("[output truncated]"));
    let nuls = "\0".repeat(100);
    assert!(cap_output(&nuls, 40).len() <= 40);
}
