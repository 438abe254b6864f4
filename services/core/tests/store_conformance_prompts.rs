//! Conformance of `WorkspaceStore` and `PromptStore`: each test runs against a
//! SQLite file and against a real PostgreSQL server (a `TempPostgres` of its own),
//! so both implementations keep the same semantics.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod conformance;

use std::collections::BTreeMap;
use std::sync::Arc;

use aetherium_core::CoreError;
use aetherium_core::store::{Cursor, Page, PromptStore, WorkspaceStore};
use aetherium_types::workspace::{MAX_PROMPT_OUTPUT_BYTES, MAX_STEP_OUTPUT_BYTES};
use aetherium_types::{
    AiAssistant, PrepStepRun, PrepStepStatus, PrepStepType, Prompt, PromptStatus, Workspace,
    WorkspaceStatus,
};
use chrono::{DateTime, Duration, TimeZone, Utc};

/// A database under test and what keeps it alive (its temp dir or server).
use conformance::Subject;

impl Subject {
    fn workspaces(&self) -> Arc<dyn WorkspaceStore> {
        self.db.workspaces()
    }

    fn prompts(&self) -> Arc<dyn PromptStore> {
        self.db.prompts()
    }
}

conformance!(
    workspaces_insert_get_list_update_delete,
    workspace_names_are_unique,
    workspace_transitions_are_compare_and_set,
    idle_workspaces_are_those_past_their_timeout,
    prep_steps_are_put_updated_and_listed_in_order,
    prompts_are_queued_by_priority_then_age,
    prompt_transitions_are_compare_and_set,
    deleting_a_workspace_deletes_its_steps_and_prompts,
);

/// A time with millisecond precision (what the stores keep), `offset_ms` after a
/// fixed instant.
fn at(offset_ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_750_000_000_000 + offset_ms)
        .single()
        .unwrap()
}

fn workspace(name: &str, created: DateTime<Utc>) -> Workspace {
    let mut config = serde_json::Map::new();
    config.insert("model".into(), serde_json::json!({"name": "m", "n": 2}));
    Workspace {
        id: format!("ws-{name}"),
        name: name.to_string(),
        description: format!("the {name} workspace"),
        environment_id: Some("env-1".into()),
        vm_id: None,
        status: WorkspaceStatus::Creating,
        status_message: None,
        ai_assistant: AiAssistant::ClaudeCode,
        ai_assistant_config: config,
        working_directory: "/workspace".into(),
        tools: vec!["git".into(), "nodejs@20".into()],
        worker_id: None,
        idle_timeout_seconds: 1800,
        last_activity_at: created,
        created_at: created,
        updated_at: created,
        ready_at: None,
    }
}

fn step(workspace_id: &str, order: u32, step_type: PrepStepType) -> PrepStepRun {
    PrepStepRun {
        workspace_id: workspace_id.to_string(),
        order,
        step_type,
        status: PrepStepStatus::Pending,
        output: String::new(),
        exit_code: None,
        error: None,
        started_at: None,
        completed_at: None,
    }
}

fn prompt(id: &str, workspace_id: &str, priority: u8, created: DateTime<Utc>) -> Prompt {
    Prompt {
        id: id.to_string(),
        workspace_id: workspace_id.to_string(),
        prompt: format!("do {id}"),
        system_prompt: Some("be brief".into()),
        working_directory: Some("/workspace/repo".into()),
        environment: BTreeMap::from([("MODE".to_string(), "test".to_string())]),
        priority,
        status: PromptStatus::Pending,
        output: String::new(),
        error: None,
        exit_code: None,
        task_id: None,
        created_at: created,
        started_at: None,
        completed_at: None,
    }
}

fn names(rows: &[Workspace]) -> Vec<&str> {
    rows.iter().map(|w| w.name.as_str()).collect()
}

fn prompt_ids(rows: &[Prompt]) -> Vec<&str> {
    rows.iter().map(|p| p.id.as_str()).collect()
}

async fn workspaces_insert_get_list_update_delete(s: Subject) {
    let store = s.workspaces();
    let w = workspace("alpha", at(0));
    store.insert_workspace(&w).await.unwrap();
    assert_eq!(store.get_workspace(&w.id).await.unwrap(), Some(w.clone()));
    assert_eq!(
        store.get_workspace_by_name("alpha").await.unwrap(),
        Some(w.clone())
    );
    assert_eq!(store.get_workspace("missing").await.unwrap(), None);
    assert_eq!(store.get_workspace_by_name("missing").await.unwrap(), None);

    // Every writable field round-trips.
    let mut changed = w.clone();
    changed.description = "changed".into();
    changed.environment_id = None;
    changed.vm_id = Some("vm-1".into());
    changed.status = WorkspaceStatus::Ready;
    changed.status_message = Some("all set".into());
    changed.ai_assistant = AiAssistant::Ampcode;
    changed.ai_assistant_config = serde_json::Map::new();
    changed.working_directory = "/home/agent".into();
    changed.tools = vec!["go@1.22".into()];
    changed.worker_id = Some("worker-1".into());
    changed.idle_timeout_seconds = 0;
    changed.last_activity_at = at(5_000);
    changed.updated_at = at(5_000);
    changed.ready_at = Some(at(4_000));
    store.update_workspace(&changed).await.unwrap();
    assert_eq!(store.get_workspace(&w.id).await.unwrap(), Some(changed));

    let mut ghost = workspace("ghost", at(0));
    ghost.id = "ws-ghost".into();
    assert!(matches!(
        store.update_workspace(&ghost).await,
        Err(CoreError::NotFound(_))
    ));
    let mut huge = w.clone();
    huge.idle_timeout_seconds = u64::MAX;
    assert!(matches!(
        store.update_workspace(&huge).await,
        Err(CoreError::InvalidInput(_))
    ));

    // Newest first, paged by keyset, with the total.
    for i in 1..=4 {
        store
            .insert_workspace(&workspace(&format!("w{i}"), at(i * 1000)))
            .await
            .unwrap();
    }
    let (rows, total) = store
        .list_workspaces(&Page::new(Some(2), None))
        .await
        .unwrap();
    assert_eq!((names(&rows), total), (vec!["w4", "w3"], 5));
    let last = rows.last().unwrap();
    let next = Page::new(Some(10), Some(Cursor::after(last.created_at, &last.id)));
    let (rows, total) = store.list_workspaces(&next).await.unwrap();
    assert_eq!((names(&rows), total), (vec!["w2", "w1", "alpha"], 5));

    assert!(store.delete_workspace(&w.id).await.unwrap());
    assert!(!store.delete_workspace(&w.id).await.unwrap());
    assert_eq!(store.get_workspace(&w.id).await.unwrap(), None);
    let (_, total) = store.list_workspaces(&Page::default()).await.unwrap();
    assert_eq!(total, 4);
}

async fn workspace_names_are_unique(s: Subject) {
    let store = s.workspaces();
    store
        .insert_workspace(&workspace("same", at(0)))
        .await
        .unwrap();
    let mut twin = workspace("same", at(1));
    twin.id = "ws-other".into();
    match store.insert_workspace(&twin).await {
        Err(CoreError::Conflict(message)) => assert!(message.contains("same"), "{message}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.get_workspace("ws-other").await.unwrap(), None);
    // The name is free again once the first is gone.
    assert!(store.delete_workspace("ws-same").await.unwrap());
    store.insert_workspace(&twin).await.unwrap();
}

async fn workspace_transitions_are_compare_and_set(s: Subject) {
    let store = s.workspaces();
    let w = workspace("cas", at(0));
    store.insert_workspace(&w).await.unwrap();

    assert!(
        !store
            .transition_workspace(
                &w.id,
                &[WorkspaceStatus::Ready],
                WorkspaceStatus::Stopped,
                None
            )
            .await
            .unwrap()
    );
    assert!(
        !store
            .transition_workspace(
                "missing",
                &[WorkspaceStatus::Creating],
                WorkspaceStatus::Preparing,
                None
            )
            .await
            .unwrap()
    );
    let before = Utc::now() - Duration::seconds(1);
    assert!(
        store
            .transition_workspace(
                &w.id,
                &[WorkspaceStatus::Creating],
                WorkspaceStatus::Preparing,
                Some("cloning")
            )
            .await
            .unwrap()
    );
    let got = store.get_workspace(&w.id).await.unwrap().unwrap();
    assert_eq!(got.status, WorkspaceStatus::Preparing);
    assert_eq!(got.status_message.as_deref(), Some("cloning"));
    assert!(got.updated_at >= before);
    assert_eq!(got.ready_at, None);
    assert_eq!(got.last_activity_at, w.last_activity_at);

    // Ready: the message is cleared, ready_at set, and the idle clock restarts.
    assert!(
        store
            .transition_workspace(
                &w.id,
                &[WorkspaceStatus::Creating, WorkspaceStatus::Preparing],
                WorkspaceStatus::Ready,
                None
            )
            .await
            .unwrap()
    );
    let got = store.get_workspace(&w.id).await.unwrap().unwrap();
    assert_eq!(got.status, WorkspaceStatus::Ready);
    assert_eq!(got.status_message, None);
    assert!(got.ready_at.is_some_and(|t| t >= before));
    assert!(got.last_activity_at >= before);

    // Many concurrent transitions from the same status: exactly one wins, each time.
    for round in 0..5 {
        let w = workspace(&format!("race{round}"), at(round));
        store.insert_workspace(&w).await.unwrap();
        let mut racers = Vec::new();
        for i in 0..8 {
            let store = store.clone();
            let id = w.id.clone();
            racers.push(tokio::spawn(async move {
                let to = if i % 2 == 0 {
                    WorkspaceStatus::Preparing
                } else {
                    WorkspaceStatus::Failed
                };
                let message = format!("racer {i}");
                let won = store
                    .transition_workspace(&id, &[WorkspaceStatus::Creating], to, Some(&message))
                    .await
                    .unwrap();
                (won, to, message)
            }));
        }
        let mut winners = Vec::new();
        for r in racers {
            let (won, to, message) = r.await.unwrap();
            if won {
                winners.push((to, message));
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let got = store.get_workspace(&w.id).await.unwrap().unwrap();
        assert_eq!(got.status, winners[0].0);
        assert_eq!(got.status_message.as_deref(), Some(winners[0].1.as_str()));
    }
}

async fn idle_workspaces_are_those_past_their_timeout(s: Subject) {
    let store = s.workspaces();
    let now = at(10_000_000);
    let ready = |name: &str, timeout: u64, last_activity: DateTime<Utc>| {
        let mut w = workspace(name, at(0));
        w.status = WorkspaceStatus::Ready;
        w.idle_timeout_seconds = timeout;
        w.last_activity_at = last_activity;
        w
    };
    // Idle for 2 h with a 1 h timeout: returned.
    let idle = ready("idle", 3600, now - Duration::hours(2));
    // Idle longer than the other, so listed first.
    let idler = ready("idler", 60, now - Duration::hours(3));
    // Timeout 0: never idles out.
    let never = ready("never", 0, now - Duration::days(30));
    // Active 10 min ago with a 1 h timeout: not idle.
    let recent = ready("recent", 3600, now - Duration::minutes(10));
    // Exactly at its timeout: not past it yet.
    let edge = ready("edge", 60, now - Duration::seconds(60));
    // Idle, but still preparing: not the idle sweeper's business.
    let mut preparing = ready("preparing", 60, now - Duration::hours(2));
    preparing.status = WorkspaceStatus::Preparing;
    for w in [&idle, &idler, &never, &recent, &edge, &preparing] {
        store.insert_workspace(w).await.unwrap();
    }
    let found = store.idle_workspaces(now).await.unwrap();
    assert_eq!(names(&found), vec!["idler", "idle"]);
    assert_eq!(found[1], idle);

    // Activity keeps a workspace alive; touching never moves the clock back.
    assert!(store.touch_workspace(&idle.id, now).await.unwrap());
    assert!(
        store
            .touch_workspace(&idle.id, now - Duration::days(1))
            .await
            .unwrap()
    );
    let got = store.get_workspace(&idle.id).await.unwrap().unwrap();
    assert_eq!(got.last_activity_at, now);
    assert!(!store.touch_workspace("missing", now).await.unwrap());
    let found = store.idle_workspaces(now).await.unwrap();
    assert_eq!(names(&found), vec!["idler"]);

    // Once stopped, it is no longer returned.
    assert!(
        store
            .transition_workspace(
                &idler.id,
                &[WorkspaceStatus::Ready],
                WorkspaceStatus::Stopped,
                Some("idle for 3h")
            )
            .await
            .unwrap()
    );
    assert!(store.idle_workspaces(now).await.unwrap().is_empty());
}

async fn prep_steps_are_put_updated_and_listed_in_order(s: Subject) {
    let store = s.workspaces();
    let w = workspace("prep", at(0));
    store.insert_workspace(&w).await.unwrap();
    assert!(store.list_prep_steps(&w.id).await.unwrap().is_empty());

    let steps = vec![
        step(&w.id, 3, PrepStepType::Script),
        step(&w.id, 1, PrepStepType::GitClone),
        step(&w.id, 2, PrepStepType::EnvVar),
    ];
    store.put_prep_steps(&w.id, &steps).await.unwrap();
    let listed = store.list_prep_steps(&w.id).await.unwrap();
    let orders: Vec<u32> = listed.iter().map(|s| s.order).collect();
    assert_eq!(orders, vec![1, 2, 3]);
    assert_eq!(listed[0], steps[1]);

    // A step's run is recorded: status, output, exit code, error, times.
    let mut clone = listed[0].clone();
    clone.status = PrepStepStatus::Completed;
    clone.output = "Cloning into 'repo'...\n".into();
    clone.exit_code = Some(0);
    clone.started_at = Some(at(100));
    clone.completed_at = Some(at(900));
    store.update_prep_step(&clone).await.unwrap();
    let mut script = listed[2].clone();
    script.status = PrepStepStatus::Failed;
    script.output = format!("{}\0tail", "x".repeat(MAX_STEP_OUTPUT_BYTES));
    script.exit_code = Some(2);
    script.error = Some("exit status 2".into());
    store.update_prep_step(&script).await.unwrap();
    let listed = store.list_prep_steps(&w.id).await.unwrap();
    assert_eq!(listed[0], clone);
    assert_eq!(listed[1].status, PrepStepStatus::Pending);
    assert_eq!(listed[2].status, PrepStepStatus::Failed);
    assert_eq!(listed[2].exit_code, Some(2));
    assert_eq!(listed[2].error.as_deref(), Some("exit status 2"));
    // Output is capped and stored without NUL bytes.
    assert!(listed[2].output.len() <= MAX_STEP_OUTPUT_BYTES);
    assert!(listed[2].output.ends_with("[output truncated]"));

    let mut missing = clone.clone();
    missing.order = 9;
    assert!(matches!(
        store.update_prep_step(&missing).await,
        Err(CoreError::NotFound(_))
    ));

    // Putting again replaces the whole list.
    store
        .put_prep_steps(&w.id, &[step(&w.id, 7, PrepStepType::Script)])
        .await
        .unwrap();
    let orders: Vec<u32> = store
        .list_prep_steps(&w.id)
        .await
        .unwrap()
        .iter()
        .map(|s| s.order)
        .collect();
    assert_eq!(orders, vec![7]);

    // Bad batches change nothing.
    let dup = [
        step(&w.id, 1, PrepStepType::Script),
        step(&w.id, 1, PrepStepType::EnvVar),
    ];
    assert!(matches!(
        store.put_prep_steps(&w.id, &dup).await,
        Err(CoreError::InvalidInput(_))
    ));
    let foreign = [step("ws-other", 1, PrepStepType::Script)];
    assert!(matches!(
        store.put_prep_steps(&w.id, &foreign).await,
        Err(CoreError::InvalidInput(_))
    ));
    assert!(matches!(
        store
            .put_prep_steps("ws-missing", &[step("ws-missing", 1, PrepStepType::Script)])
            .await,
        Err(CoreError::NotFound(_))
    ));
    assert_eq!(store.list_prep_steps(&w.id).await.unwrap().len(), 1);
    assert!(
        store
            .list_prep_steps("ws-missing")
            .await
            .unwrap()
            .is_empty()
    );
}

async fn prompts_are_queued_by_priority_then_age(s: Subject) {
    let (workspaces, prompts) = (s.workspaces(), s.prompts());
    let w = workspace("queue", at(0));
    let other = workspace("other", at(0));
    workspaces.insert_workspace(&w).await.unwrap();
    workspaces.insert_workspace(&other).await.unwrap();
    assert_eq!(prompts.next_prompt(&w.id).await.unwrap(), None);

    let queued = [
        prompt("p-low-old", &w.id, 1, at(100)),
        prompt("p-high-new", &w.id, 9, at(400)),
        prompt("p-mid-old", &w.id, 5, at(200)),
        prompt("p-high-old", &w.id, 9, at(300)),
        prompt("p-mid-new", &w.id, 5, at(500)),
        // Another workspace's prompt, with the highest priority, never shows up here.
        prompt("p-other", &other.id, 10, at(50)),
    ];
    for p in &queued {
        prompts.insert_prompt(p).await.unwrap();
    }
    assert_eq!(
        prompts.get_prompt("p-mid-old").await.unwrap(),
        Some(queued[2].clone())
    );
    assert_eq!(prompts.get_prompt("missing").await.unwrap(), None);
    assert!(matches!(
        prompts.insert_prompt(&queued[0]).await,
        Err(CoreError::Conflict(_))
    ));
    assert!(matches!(
        prompts
            .insert_prompt(&prompt("p-orphan", "ws-missing", 5, at(0)))
            .await,
        Err(CoreError::NotFound(_))
    ));

    // Newest first.
    let listed = prompts.list_prompts(&w.id).await.unwrap();
    assert_eq!(
        prompt_ids(&listed),
        vec![
            "p-mid-new",
            "p-high-new",
            "p-high-old",
            "p-mid-old",
            "p-low-old"
        ]
    );

    // Run them in queue order: each is taken (pending → running), then finished.
    let mut order = Vec::new();
    while let Some(next) = prompts.next_prompt(&w.id).await.unwrap() {
        assert_eq!(next.status, PromptStatus::Pending);
        assert!(!prompts.has_running_prompt(&w.id).await.unwrap());
        assert!(
            prompts
                .transition_prompt(&next.id, &[PromptStatus::Pending], PromptStatus::Running)
                .await
                .unwrap()
        );
        assert!(prompts.has_running_prompt(&w.id).await.unwrap());
        // A running prompt is not offered again.
        assert_ne!(
            prompts.next_prompt(&w.id).await.unwrap().map(|p| p.id),
            Some(next.id.clone())
        );
        let to = if order.len() % 2 == 0 {
            PromptStatus::Completed
        } else {
            PromptStatus::Failed
        };
        assert!(
            prompts
                .transition_prompt(&next.id, &[PromptStatus::Running], to)
                .await
                .unwrap()
        );
        order.push(next.id);
    }
    assert_eq!(
        order,
        vec![
            "p-high-old",
            "p-high-new",
            "p-mid-old",
            "p-mid-new",
            "p-low-old"
        ]
    );
    assert!(!prompts.has_running_prompt(&w.id).await.unwrap());
    // The other workspace's queue is untouched.
    assert_eq!(
        prompts.next_prompt(&other.id).await.unwrap().map(|p| p.id),
        Some("p-other".to_string())
    );
}

async fn prompt_transitions_are_compare_and_set(s: Subject) {
    let (workspaces, prompts) = (s.workspaces(), s.prompts());
    let w = workspace("prompts", at(0));
    workspaces.insert_workspace(&w).await.unwrap();
    let p = prompt("p1", &w.id, 5, at(0));
    prompts.insert_prompt(&p).await.unwrap();

    assert!(
        !prompts
            .transition_prompt(&p.id, &[PromptStatus::Running], PromptStatus::Completed)
            .await
            .unwrap()
    );
    assert!(
        !prompts
            .transition_prompt("missing", &[PromptStatus::Pending], PromptStatus::Running)
            .await
            .unwrap()
    );
    let before = Utc::now() - Duration::seconds(1);
    assert!(
        prompts
            .transition_prompt(&p.id, &[PromptStatus::Pending], PromptStatus::Running)
            .await
            .unwrap()
    );
    let got = prompts.get_prompt(&p.id).await.unwrap().unwrap();
    assert_eq!(got.status, PromptStatus::Running);
    assert!(got.started_at.is_some_and(|t| t >= before));
    assert_eq!(got.completed_at, None);

    // The runner records the result.
    let mut done = got.clone();
    done.status = PromptStatus::Completed;
    done.output = format!("{}\0", "y".repeat(MAX_PROMPT_OUTPUT_BYTES));
    done.exit_code = Some(0);
    done.task_id = Some("task-1".into());
    done.completed_at = Some(at(9_000));
    prompts.update_prompt(&done).await.unwrap();
    let got = prompts.get_prompt(&p.id).await.unwrap().unwrap();
    assert_eq!(got.status, PromptStatus::Completed);
    assert_eq!(got.exit_code, Some(0));
    assert_eq!(got.task_id.as_deref(), Some("task-1"));
    assert_eq!(got.completed_at, Some(at(9_000)));
    assert!(got.output.len() <= MAX_PROMPT_OUTPUT_BYTES);
    assert!(!got.output.contains('\0'));
    // A finished prompt cannot be cancelled.
    assert!(
        !prompts
            .transition_prompt(
                &p.id,
                &[PromptStatus::Pending, PromptStatus::Running],
                PromptStatus::Cancelled
            )
            .await
            .unwrap()
    );
    let mut ghost = p.clone();
    ghost.id = "ghost".into();
    assert!(matches!(
        prompts.update_prompt(&ghost).await,
        Err(CoreError::NotFound(_))
    ));

    // Many concurrent takers of one pending prompt: exactly one wins, each time.
    for round in 0..5 {
        let p = prompt(&format!("race{round}"), &w.id, 5, at(round));
        prompts.insert_prompt(&p).await.unwrap();
        let mut racers = Vec::new();
        for i in 0..8 {
            let prompts = prompts.clone();
            let id = p.id.clone();
            racers.push(tokio::spawn(async move {
                let to = if i % 2 == 0 {
                    PromptStatus::Running
                } else {
                    PromptStatus::Cancelled
                };
                let won = prompts
                    .transition_prompt(&id, &[PromptStatus::Pending], to)
                    .await
                    .unwrap();
                (won, to)
            }));
        }
        let mut winners = Vec::new();
        for r in racers {
            let (won, to) = r.await.unwrap();
            if won {
                winners.push(to);
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let got = prompts.get_prompt(&p.id).await.unwrap().unwrap();
        assert_eq!(got.status, winners[0]);
        assert_eq!(
            got.completed_at.is_some(),
            winners[0] == PromptStatus::Cancelled
        );
    }
}

async fn deleting_a_workspace_deletes_its_steps_and_prompts(s: Subject) {
    let (workspaces, prompts) = (s.workspaces(), s.prompts());
    let gone = workspace("gone", at(0));
    let kept = workspace("kept", at(0));
    for w in [&gone, &kept] {
        workspaces.insert_workspace(w).await.unwrap();
        workspaces
            .put_prep_steps(&w.id, &[step(&w.id, 1, PrepStepType::GitClone)])
            .await
            .unwrap();
        prompts
            .insert_prompt(&prompt(&format!("p-{}", w.name), &w.id, 5, at(1)))
            .await
            .unwrap();
    }
    assert!(workspaces.delete_workspace(&gone.id).await.unwrap());
    assert!(
        workspaces
            .list_prep_steps(&gone.id)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(prompts.list_prompts(&gone.id).await.unwrap().is_empty());
    assert_eq!(prompts.get_prompt("p-gone").await.unwrap(), None);
    assert_eq!(prompts.next_prompt(&gone.id).await.unwrap(), None);
    // The other workspace keeps its own.
    assert_eq!(workspaces.list_prep_steps(&kept.id).await.unwrap().len(), 1);
    assert_eq!(
        prompt_ids(&prompts.list_prompts(&kept.id).await.unwrap()),
        vec!["p-kept"]
    );
    // A workspace with the deleted one's name can be created again.
    workspaces.insert_workspace(&gone).await.unwrap();
    assert!(
        workspaces
            .list_prep_steps(&gone.id)
            .await
            .unwrap()
            .is_empty()
    );
}
