use super::*;

#[test]
fn end_events_read_like_envd() {
    // Raw wait statuses: exit code in the second byte, signal in the low bits.
    let exited = end_event(ExitStatus::from_raw(3 << 8));
    assert_eq!(
        exited,
        EndEvent {
            exit_code: 3,
            exited: true,
            status: "exit status 3".into(),
            error: Some("exit status 3".into()),
        }
    );
    let clean = end_event(ExitStatus::from_raw(0));
    assert_eq!((clean.exit_code, clean.error), (0, None));
    let killed = end_event(ExitStatus::from_raw(9));
    assert_eq!(
        (killed.exit_code, killed.exited, killed.status.as_str()),
        (-1, false, "signal: killed")
    );
    let dumped = end_event(ExitStatus::from_raw(11 | 0x80));
    assert_eq!(dumped.status, "signal: segmentation fault (core dumped)");
    assert_eq!(signal_description(64), "signal 64");
    assert_eq!(signal_description(15), "terminated");
}

fn insert(table: &ProcessTable, pid: u32, tag: Option<&str>) -> u64 {
    table
        .insert(|serial| Process {
            pid,
            serial,
            info: ProcessInfo {
                config: ProcessConfig::default(),
                pid,
                tag: tag.map(str::to_string),
            },
            stdin: tokio::sync::Mutex::new(None),
            pty: None,
            fanout: Mutex::default(),
        })
        .serial
}

#[test]
fn table_resolves_pids_and_tags() {
    let table = ProcessTable::default();
    insert(&table, 20, Some("web"));
    let ten = insert(&table, 10, Some("web"));
    let thirty = insert(&table, 30, None);
    let pid = |s: ProcessSelector| table.resolve(&s).map(|p| p.pid);
    assert_eq!(pid(ProcessSelector::Pid(30)), Some(30));
    assert_eq!(pid(ProcessSelector::Pid(31)), None);
    assert_eq!(pid(ProcessSelector::Tag("web".into())), Some(10));
    assert_eq!(pid(ProcessSelector::Tag("db".into())), None);
    table.remove(10, ten);
    // pid 30 reused: the old supervisor's removal must not unlist the new one.
    insert(&table, 30, Some("new"));
    table.remove(30, thirty);
    assert_eq!(
        table.list().iter().map(|p| p.pid).collect::<Vec<_>>(),
        vec![20, 30]
    );
    assert_eq!(table.len(), 2);
}

fn launch() -> Launch {
    Launch {
        user: users::current(),
        default_workdir: None,
        env: Vec::new(),
        timeout: None,
    }
}

#[tokio::test]
async fn start_validates_before_spawning() {
    let table = Arc::new(ProcessTable::default());
    let code = |request: StartRequest| {
        start(&table, request, launch())
            .map(|_| ())
            .map_err(|e| e.code)
    };
    assert_eq!(
        code(StartRequest::default()),
        Err(code::INVALID_ARGUMENT.into())
    );
    let mut bad_cwd = StartRequest::default();
    bad_cwd.process.cmd = "true".into();
    bad_cwd.process.cwd = Some("/definitely/not/here".into());
    assert_eq!(code(bad_cwd), Err(code::INVALID_ARGUMENT.into()));
    let mut missing = StartRequest::default();
    missing.process.cmd = "no-such-command-aetherium".into();
    assert_eq!(code(missing), Err(code::NOT_FOUND.into()));
    assert!(table.list().is_empty());
}

#[test]
fn selectors_and_signals_are_checked() {
    let table = ProcessTable::default();
    let err = send_signal(&table, Some(&ProcessSelector::Pid(1)), Signal::Unspecified)
        .expect_err("unspecified");
    assert_eq!(err.code, code::INVALID_ARGUMENT);
    let err =
        send_signal(&table, Some(&ProcessSelector::Pid(1)), Signal::Sigterm).expect_err("not ours");
    assert_eq!(err.code, code::NOT_FOUND);
    let err = send_signal(&table, None, Signal::Sigterm).expect_err("no selector");
    assert_eq!(err.code, code::INVALID_ARGUMENT);
}
