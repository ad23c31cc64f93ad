//! The runtime conformance suite: what any [`Runtime`] driver must do, written once against the
//! trait so every driver is held to the same contract.
//!
//! Each behaviour is one async function taking `(&dyn Runtime, Isolation)`. It creates its own
//! sandboxes under an installation id of its own and destroys them when it ends, also when it
//! fails. [`suite`] prepares the engine (it must answer, the `busybox` template must be there,
//! the isolation must work), runs every behaviour, and fails listing every behaviour that did.
//!
//! What differs between drivers is asked of [`Capabilities`], never found out by trying: a
//! behaviour a driver does not claim is skipped, and the driver's own entry point asserts that
//! it claims what it has (see [`docker_claims`]).
//!
//! A new driver (a microVM, say) adds one entry point per isolation it offers:
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn microvm_meets_the_contract() {
//!     let rt = MicroVmRuntime::connect(...);
//!     suite(&rt, Isolation::Container).await;
//! }
//! ```
//!
//! The runtime must be multi-threaded: cleanup after a failure blocks in `Drop`.
//!
//! Needs a running engine (`sudo scripts/engine-up`) and the busybox template tarball
//! (`sudo scripts/build-templates busybox`; `CAGED_TEMPLATE_DIR` overrides where it is looked
//! for).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use caged_domain::{Isolation, NetworkMode, Resources, SandboxId};
use caged_runtime::{
    ByteStream, Capabilities, DEFAULT_PIDS_LIMIT, DockerRuntime, EngineInfo, EngineState, Exec,
    ExecOutput, ExecSpec, FsChange, Runtime, RuntimeError, SandboxSpec,
};
use futures_util::{FutureExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TEMPLATE: &str = "busybox";
/// How long anything that should happen is waited for before the check fails. A bound on
/// polling, not a timing assertion: it only turns a hang into a failure.
const DEADLINE: Duration = Duration::from_secs(60);
/// What the file checks write. They write in /workspace, the sandbox's working directory, not
/// /tmp: under gVisor runsc mounts a tmpfs of its own on an image's empty /tmp, which the
/// engine's file API (and the host) cannot see.
const FILE_CONTENT: &[u8] = b"hello from the conformance suite\n";
/// Set in every sandbox's environment (to its installation id), to check `SandboxSpec::env`.
const MARK: &str = "CONFORMANCE_MARK";

// ---------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_runc_meets_the_contract() {
    docker_meets_the_contract(Isolation::Container).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_gvisor_meets_the_contract() {
    docker_meets_the_contract(Isolation::Gvisor).await;
}

async fn docker_meets_the_contract(isolation: Isolation) {
    let started = Instant::now();
    let installation = caged_domain::random_hex(6);
    let rt = DockerRuntime::connect(None, &installation);
    let info = prepare(&rt, isolation).await;
    docker_claims(&rt.capabilities(), &info);
    let other = DockerRuntime::connect(None, &caged_domain::random_hex(6));
    let theirs = other
        .templates()
        .await
        .expect("another installation lists its templates");
    assert!(
        theirs.is_empty(),
        "templates belong to the installation that imported them: a new one sees {:?}",
        theirs.iter().map(|t| &t.name).collect::<Vec<_>>()
    );
    let outcome = AssertUnwindSafe(suite(&rt, isolation)).catch_unwind().await;
    // The driver's own throwaway containers (its gVisor probe) carry its installation id.
    sweep(&rt, &installation).await;
    for template in [TEMPLATE, BARE_TEMPLATE] {
        let _ = rt.remove_template(template).await;
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    eprintln!(
        "docker/{isolation:?} met the contract in {:.1?}",
        started.elapsed()
    );
}

/// The Docker driver claims everything it has.
fn docker_claims(caps: &Capabilities, info: &EngineInfo) {
    assert!(
        caps.isolations.contains(&Isolation::Container)
            && caps.isolations.contains(&Isolation::Gvisor),
        "the Docker driver offers runc and gVisor, but claims {:?}",
        caps.isolations
    );
    assert!(
        caps.pause,
        "the Docker driver can pause, but does not claim it"
    );
    assert!(
        caps.filesystem_snapshot,
        "the Docker driver has `changes`/`export`, but does not claim filesystem snapshots"
    );
    assert!(
        !caps.memory_snapshot,
        "the Docker driver cannot save a paused sandbox's memory, but claims it can"
    );
    assert!(
        caps.host_processes,
        "a local Docker engine's runc processes are visible to the host, but the driver does not claim it"
    );
    assert!(
        caps.network_namespace,
        "the Docker driver opens sandboxes' network namespaces, but does not claim it"
    );
    if info.storage_driver == "btrfs" {
        assert!(
            caps.host_files,
            "on a btrfs engine ({:?}) the Docker driver can watch sandboxes' files, but does not claim it",
            info.sandbox_filesystems
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The suite
// ---------------------------------------------------------------------------------------------

/// Runs every behaviour against `rt` under `isolation`, all of them even when some fail, and
/// fails naming those that did.
pub async fn suite(rt: &dyn Runtime, isolation: Isolation) {
    prepare(rt, isolation).await;
    let mut failed: Vec<String> = Vec::new();
    macro_rules! check {
        ($($behaviour:ident),* $(,)?) => {$(
            check(stringify!($behaviour), isolation, &mut failed, $behaviour(rt, isolation)).await;
        )*};
    }
    check!(
        probe_answers,
        create_runs_the_sandbox_and_lists_it,
        exec_collects_output_and_exit_status,
        stdin_is_delivered_and_eof_closes_it,
        tty_can_be_resized,
        kill_ends_the_command_and_everything_it_started,
        kill_works_as_soon_as_exec_returns,
        host_pid_is_known_only_where_the_host_sees_processes,
        pause_freezes_and_resume_thaws,
        files_go_in_and_come_out_as_tar,
        missing_path_is_path_not_found,
        changes_and_export_see_written_files,
        network_namespace_opens,
        host_view_maps_roots_to_sandboxes,
        staged_sandbox_is_promoted_in_place_of_the_original,
        destroy_is_idempotent_and_the_sandbox_is_gone,
        unknown_template_is_template_missing_and_leaves_nothing,
        templates_describe_themselves_and_are_removed,
        commands_run_as_the_user_asked,
    );
    assert!(
        failed.is_empty(),
        "{isolation:?}: {} behaviour(s) failed: {}",
        failed.len(),
        failed.join(", ")
    );
}

async fn check(
    name: &str,
    isolation: Isolation,
    failed: &mut Vec<String>,
    behaviour: impl Future<Output = ()>,
) {
    let started = Instant::now();
    match AssertUnwindSafe(behaviour).catch_unwind().await {
        Ok(()) => eprintln!("{isolation:?}: ok   {name} ({:.1?})", started.elapsed()),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            eprintln!("{isolation:?}: FAIL {name}: {message}");
            failed.push(name.to_string());
        }
    }
}

/// What every behaviour relies on: the engine answers, knows the template and runs the
/// isolation. Fails at once, with what to do, when it does not.
async fn prepare(rt: &dyn Runtime, isolation: Isolation) -> EngineInfo {
    if let Err(err) = rt.ping().await {
        panic!(
            "the container engine does not answer ({err}); start it with: sudo scripts/engine-up"
        );
    }
    let info = rt.probe().await.unwrap_or_else(|err| {
        panic!("probe failed ({err}); start it with: sudo scripts/engine-up")
    });
    ensure_template(rt).await;
    let caps = rt.capabilities();
    assert!(
        caps.isolations.contains(&isolation),
        "the suite runs {isolation:?}, which the driver does not offer ({:?})",
        caps.isolations
    );
    let support = rt.isolation_support(isolation).await;
    assert!(
        support.available,
        "{isolation:?} isolation is unavailable here: {}",
        support.detail
    );
    info
}

/// Imports the `busybox` template from its tarball when the runtime's installation lacks it.
async fn ensure_template(rt: &dyn Runtime) {
    import_missing_template(rt).await;
}

async fn import_missing_template(rt: &dyn Runtime) {
    let present = rt.templates().await.expect("templates are listed");
    if present.iter().any(|template| template.name == TEMPLATE) {
        return;
    }
    let path = template_dir().join(format!("{TEMPLATE}.tar"));
    let file = tokio::fs::File::open(&path).await.unwrap_or_else(|err| {
        panic!(
            "template tarball {} is missing ({err}); build it with: sudo scripts/build-templates {TEMPLATE}",
            path.display()
        )
    });
    let imported = rt
        .import_template(TEMPLATE, file_stream(file))
        .await
        .unwrap_or_else(|err| panic!("importing {} failed: {err}", path.display()));
    assert_eq!(
        imported.name, TEMPLATE,
        "the imported template is named as asked"
    );
}

/// Where `scripts/build-templates` leaves its tarballs (as `caged_testkit::template_dir`).
fn template_dir() -> PathBuf {
    std::env::var_os("CAGED_TEMPLATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/caged/templates"))
}

fn file_stream(file: tokio::fs::File) -> ByteStream {
    Box::pin(futures_util::stream::unfold(file, |mut file| async move {
        let mut chunk = vec![0u8; 256 << 10];
        match file.read(&mut chunk).await {
            Ok(0) => None,
            Ok(n) => {
                chunk.truncate(n);
                Some((Ok(Bytes::from(chunk)), file))
            }
            Err(err) => Some((Err(RuntimeError::Io(err)), file)),
        }
    }))
}

// ---------------------------------------------------------------------------------------------
// Behaviours
// ---------------------------------------------------------------------------------------------

async fn probe_answers(rt: &dyn Runtime, isolation: Isolation) {
    rt.ping().await.expect("ping answers");
    let info = rt.probe().await.expect("probe answers");
    assert!(!info.version.is_empty(), "probe names the engine's version");
    let again = rt.probe().await.expect("probe can be asked again");
    assert_eq!(
        again.version, info.version,
        "a second probe finds the same engine"
    );
    if isolation == Isolation::Gvisor {
        assert!(
            info.gvisor.available,
            "once isolation_support found gVisor working, probe reports it: {:?}",
            info.gvisor
        );
    }
    let caps = rt.capabilities();
    let view = rt.host_view();
    assert_eq!(
        caps.host_files,
        view.is_some(),
        "capabilities claim host_files exactly when probe found a host view"
    );
    assert_eq!(
        info.sandbox_filesystems.is_some(),
        view.is_some(),
        "probe reports where sandboxes' filesystems are exactly when there is a host view"
    );
    if let (Some(view), Some(filesystems)) = (view, &info.sandbox_filesystems) {
        assert!(
            view.roots().starts_with(filesystems),
            "the host view's roots {} lie where probe says sandboxes' filesystems are ({})",
            view.roots().display(),
            filesystems.display()
        );
    }
}

async fn create_runs_the_sandbox_and_lists_it(rt: &dyn Runtime, isolation: Isolation) {
    let mut cage = Cage::new(rt, isolation);
    let (spec, handle) = cage.create().await;
    let description = rt.describe(&handle).await.expect("describe a new sandbox");
    assert_eq!(
        description.state,
        EngineState::Running,
        "a created sandbox is running"
    );
    assert!(!description.engine.is_empty(), "describe names the engine");
    let listed = rt.list(&cage.installation).await.expect("list");
    assert_eq!(
        listed.len(),
        1,
        "list shows exactly the one sandbox of this installation: {listed:?}"
    );
    assert_eq!(
        listed[0].container_id, handle,
        "list gives the handle create returned"
    );
    assert_eq!(
        listed[0].sandbox_id,
        Some(spec.id),
        "list names the sandbox's id"
    );
    assert_eq!(
        listed[0].state,
        EngineState::Running,
        "list says it is running"
    );
    let (stdout, _, code) = run(
        rt,
        &handle,
        isolation,
        &["sh", "-c", &format!("echo ${MARK}")],
    )
    .await;
    assert_eq!(code, 0, "a command runs in the new sandbox");
    assert_eq!(
        stdout.trim(),
        cage.installation,
        "commands see the environment the spec gave the sandbox"
    );
    cage.finish().await;
}

async fn exec_collects_output_and_exit_status(rt: &dyn Runtime, isolation: Isolation) {
    let mut cage = Cage::new(rt, isolation);
    let (_, handle) = cage.create().await;
    let (stdout, stderr, code) = run(
        rt,
        &handle,
        isolation,
        &["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"],
    )
    .await;
    assert_eq!(
        stdout, "to-stdout\n",
        "stdout is collected apart from stderr"
    );
    assert_eq!(
        stderr, "to-stderr\n",
        "stderr is collected apart from stdout"
    );
    assert_eq!(code, 3, "wait gives the command's exit status");
    cage.finish().await;
}

async fn stdin_is_delivered_and_eof_closes_it(rt: &dyn Runtime, isolation: Isolation) {
    let mut cage = Cage::new(rt, isolation);
    let (_, handle) = cage.create().await;
    let spec = ExecSpec {
        cmd: argv(&["cat"]),
        stdin: true,
        isolation,
        ..ExecSpec::default()
    };
    let mut exec = rt.exec(&handle, &spec).await.expect("cat starts");
    exec.input
        .write_all(b"line one\nline two\n")
        .await
        .expect("stdin takes bytes");
    exec.input.shutdown().await.expect("stdin can be closed");
    drop(exec.input);
    let (stdout, stderr) = collect(exec.output, "cat after its stdin closed").await;
    assert_eq!(
        stdout, "line one\nline two\n",
        "cat echoes what stdin was given"
    );
    assert_eq!(stderr, "", "cat writes nothing to stderr");
    assert_eq!(
        exec.control.wait().await.expect("wait"),
        Some(0),
        "cat exits 0 once its stdin is closed"
    );
    cage.finish().await;
}

async fn tty_can_be_resized(rt: &dyn Runtime, isolation: Isolation) {
    let (cols, rows) = (100u16, 30u16);
    let mut cage = Cage::new(rt, isolation);
    let (_, handle) = cage.create().await;
    // The command polls (bounded) for the new size, so a resize that lands late is not a race.
    let script = format!(
        "i=0; while [ \"$(stty size 2>/dev/null)\" != '{rows} {cols}' ] && [ $i -lt 300 ]; do \
         sleep 0.1; i=$((i+1)); done; stty size"
    );
    let spec = ExecSpec {
        cmd: argv(&["sh", "-c", &script]),
        tty: true,
        isolation,
        ..ExecSpec::default()
    };
    let exec = rt.exec(&handle, &spec).await.expect("a tty command starts");
    // The engine may take a moment to know the command's terminal; retry until it does.
    let deadline = Instant::now() + DEADLINE;
    loop {
        match exec.control.resize(cols, rows).await {
            Ok(()) => break,
            Err(err) if Instant::now() < deadline => {
                eprintln!("resize not taken yet ({err}); retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("the tty command's terminal cannot be resized: {err}"),
        }
    }
    let (stdout, _) = collect(exec.output, "stty size").await;
    assert_eq!(
        stdout.trim(),
        format!("{rows} {cols}"),
        "after resize(cols {cols}, rows {rows}) the terminal is {rows} rows by {cols} columns"
    );
    assert_eq!(
        exec.control.wait().await.expect("wait"),
        Some(0),
        "stty exits 0"
    );
    cage.finish().await;
}

async fn kill_works_as_soon_as_exec_returns(rt: &dyn Runtime, isolation: Isolation) {
    let mut cage = Cage::new(rt, isolation);
    let (_, handle) = cage.create().await;
    let spec = exec_spec(&["sleep", "600"], isolation);
    let mut exec = rt
        .exec(&handle, &spec)
        .await
        .expect("the long command starts");
    // A command is started once exec returns: a kill at once (a client that goes away, a
    // timeout) must stop it, not fail and not be a no-op that leaves it running.
    exec.control
        .kill()
        .await
        .expect("kill a command at once after exec returned");
    let ended = tokio::time::timeout(DEADLINE, async {
        while let Some(item) = exec.output.next().await {
            item.expect("output of a killed command");
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the command killed at once was still running after {DEADLINE:?}"
    );
    cage.finish().await;
}

async fn kill_ends_the_command_and_everything_it_started(rt: &dyn Runtime, isolation: Isolation) {
    let mut cage = Cage::new(rt, isolation);
    let (_, handle) = cage.create().await;
    let spec = ExecSpec {
        cmd: argv(&["sh", "-c", "sleep 600 & echo started; sleep 600"]),
        isolation,
        ..ExecSpec::default()
    };
    let mut exec = rt
        .exec(&handle, &spec)
        .await
        .expect("the long command starts");
    wait_for_stdout(&mut exec, "started").await;
    // Asking for the host pid first gives the engine time to record it, so this check is about
    // the killing of a tree; a kill right after start is checked on its own
    // (kill_works_as_soon_as_exec_returns).
    exec.control.host_pid().await.expect("host_pid answers");
    exec.control.kill().await.expect("kill a running command");
    let ended = tokio::time::timeout(DEADLINE, async {
        while let Some(item) = exec.output.next().await {
            item.expect("output of a killed command");
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the killed command's output did not end within {DEADLINE:?}"
    );
    let code = exec.control.wait().await.expect("wait after kill");
    assert_ne!(code, Some(0), "a killed command did not exit successfully");
    poll(
        "no `sleep 600` is left in the sandbox after kill (the command and its child)",
        || async {
            let (ps, _, _) = run(rt, &handle, isolation, &["ps", "-o", "pid,stat,args"]).await;
            let left: Vec<&str> = ps
                .lines()
                .filter(|line| line.contains("sleep 600") && !line.contains(" Z"))
                .collect();
            left.is_empty().then_some(()).ok_or(ps)
        },
    )
    .await;
    exec.control
        .kill()
        .await
        .expect("killing a command that already ended is not an error");
    cage.finish().await;
}

async fn host_pid_is_known_only_where_the_host_sees_processes(
    rt: &dyn Runtime,
    isolation: Isolation,
) {
    let host_sees = rt.capabilities().host_processes && isolation == Isolation::Container;
    let mut cage = Cage::new(rt, isolation);
    let (_, handle) = cage.create().await;
    let spec = ExecSpec {
        cmd: argv(&["sh", "-c", "echo started; exec sleep 600"]),
        isolation,
        ..ExecSpec::default()
    };
    let mut exec = rt.exec(&handle, &spec).await.expect("sleep starts");
    wait_for_stdout(&mut exec, "started").await;
    let pid = exec.control.host_pid().await.expect("host_pid answers");
    if host_sees {
        let pid = pid.expect("under runc with host_processes the host pid of a command is known");
        assert!(pid > 0, "host pid {pid} is a real pid");
        poll(
            "the host pid's /proc entry shows the command (`sleep 600`)",
            || async {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                cmdline.contains("sleep").then_some(()).ok_or(cmdline)
            },
        )
        .await;
    } else {
        assert_eq!(
            pid, None,
            "under {isolation:?} the host does not see the sandbox's processes, so no host pid"
        );
    }
    exec.control.kill().await.expect("kill");
    cage.finish().await;
}

async fn pause_freezes_and_resume_thaws(rt: &dyn Runtime, isolation: Isolation) {
    if !rt.capabilities().pause {
        eprintln!("skipped: the driver does not claim pause");
        return;
    }
    let mut cage = Cage::new(rt, isolation);
    let (_, handle) = cage.create().await;
    rt.pause(&handle).await.expect("pause a running sandbox");
    let description = rt.describe(&handle).await.expect("describe while paused");
    assert_eq!(
        description.state,
        EngineState::Paused,
        "describe says paused"
    );
    assert_eq!(
        listed_state(rt, &cage.installation, &handle).await,
        EngineState::Paused,
        "list says paused"
    );
    match rt
        .exec(&handle, &exec_spec(&["echo", "while paused"], isolation))
        .await
    {
        Ok(_) => panic!("an exec in a paused sandbox is refused, but it started"),
        Err(err) => eprintln!("exec while paused refused, as it should be: {err}"),
    }
    rt.resume(&handle).await.expect("resume a paused sandbox");
    let description = rt.describe(&handle).await.expect("describe after resume");
    assert_eq!(
        description.state,
        EngineState::Running,
        "describe says running after resume"
    );
    assert_eq!(
        listed_state(rt, &cage.installation, &handle).await,
        EngineState::Running,
        "list says running after resume"
    );
    let (stdout, _, code) = run(rt, &handle, isolation, &["echo", "thawed"]).await;
    assert_eq!(
        (stdout.as_str(), code),
        ("thawed\n", 0),
        "exec works again after resume"
    );
    cage.finish().await;
}

async fn files_go_in_and_come_out_as_tar(rt: &dyn Runtime, isolation: Isolation) {
    let mut cage = Cage::new(rt, isolation);
    let (_, handle) = cage.create().await;
    rt.write_tar(&handle, "/workspace", Bytes::from(small_tar()))
        .await
        .expect("write_tar into /workspace");
    let dir = rt
        .stat_path(&handle, "/workspace/conf")
        .await
        .expect("stat the written dir");
    assert!(dir.is_dir, "the written dir is a dir: {dir:?}");
    assert_eq!(dir.mode & 0o777, 0o755, "the dir keeps its mode: {dir:?}");
    let file = rt
        .stat_path(&handle, "/workspace/conf/app.txt")
        .await
        .expect("stat the written file");
    assert!(!file.is_dir, "the written file is not a dir: {file:?}");
    assert_eq!(
        file.size,
        FILE_CONTENT.len() as i64,
        "the file has its size: {file:?}"
    );
    assert_eq!(
        file.mode & 0o777,
        0o640,
        "the file keeps its mode: {file:?}"
    );
    assert_eq!(file.link_target, None, "a plain file is no link: {file:?}");
    let (stdout, _, code) = run(rt, &handle, isolation, &["cat", "/workspace/conf/app.txt"]).await;
    assert_eq!(
        (stdout.as_bytes(), code),
        (FILE_CONTENT, 0),
        "the sandbox's processes see the written file"
    );
    let tar = read_all(
        rt.read_tar(&handle, "/workspace/conf/app.txt")
            .await
            .expect("read_tar the file"),
    )
    .await;
    assert_eq!(
        tar_entry(&tar, "app.txt").as_deref(),
        Some(FILE_CONTENT),
        "read_tar gives a tar with the file, named by its last component"
    );
    cage.finish().await;
}

async fn missing_path_is_path_not_found(rt: &dyn Runtime, isolation: Isolation) {
    let mut cage = Cage::new(rt, isolation);
    let (_, handle) = cage.create().await;
    let missing = "/workspace/no/such/path";
    match rt.stat_path(&handle, missing).await {
        Err(RuntimeError::PathNotFound { path }) => {
            assert_eq!(path, missing, "PathNotFound names the path asked for")
        }
        other => panic!("stat_path of a missing path is PathNotFound, not {other:?}"),
    }
    match rt.read_tar(&handle, missing).await {
        Err(RuntimeError::PathNotFound { .. }) => {}
        Err(other) => panic!("read_tar of a missing path is PathNotFound, not {other:?}"),
        Ok(_) => panic!("read_tar of a missing path is PathNotFound, not a stream"),
    }
    cage.finish().await;
}

async fn changes_and_export_see_written_files(rt: &dyn Runtime, isolation: Isolation) {
    if !rt.capabilities().filesystem_snapshot {
        eprintln!("skipped: the driver does not claim filesystem snapshots");
        return;
    }
    let mut cage = Cage::new(rt, isolation);
    let (_, handle) = cage.create().await;
    rt.write_tar(&handle, "/workspace", Bytes::from(small_tar()))
        .await
        .expect("write_tar into /workspace");
    let changes = rt.changes(&handle).await.expect("changes");
    assert!(
        changes.contains(&FsChange::Added("/workspace/conf/app.txt".into())),
        "changes list the added file: {changes:?}"
    );
    let export = read_all(rt.export(&handle).await.expect("export")).await;
    assert_eq!(
        tar_entry(&export, "workspace/conf/app.txt").as_deref(),
        Some(FILE_CONTENT),
        "export is a tar of the whole filesystem, with the added file"
    );
    assert!(
        tar_entry(&export, "bin/busybox").is_some(),
        "export holds the template's files too"
    );
    cage.finish().await;
}

async fn network_namespace_opens(rt: &dyn Runtime, isolation: Isolation) {
    if !rt.capabilities().network_namespace {
        eprintln!("skipped: the driver does not claim network namespaces");
        return;
    }
    let mut cage = Cage::new(rt, isolation);
    let (_, handle) = cage.create().await;
    let ns = rt
        .network_namespace(&handle)
        .await
        .expect("the running sandbox's network namespace opens");
    let inode = ns.inode().expect("the namespace has an identity");
    let own = caged_netns::NetNs::current()
        .and_then(|ns| ns.inode())
        .expect("this process's namespace");
    assert_ne!(inode, own, "the sandbox's namespace is not the host's");
    if isolation == Isolation::Container && rt.capabilities().host_processes {
        // Where the host sees the sandbox's processes, it sees them in that namespace.
        let (inside, _, _) = run(rt, &handle, isolation, &["readlink", "/proc/1/ns/net"]).await;
        assert_eq!(
            inside.trim(),
            format!("net:[{inode}]"),
            "the opened namespace is the one the sandbox's processes are in"
        );
    }
    cage.finish().await;
}

async fn host_view_maps_roots_to_sandboxes(rt: &dyn Runtime, isolation: Isolation) {
    if !rt.capabilities().host_files {
        eprintln!("skipped: the driver does not claim host files");
        return;
    }
    let view = rt
        .host_view()
        .expect("a driver that claims host_files has a host view");
    let mut cage = Cage::new(rt, isolation);
    let (_, handle) = cage.create().await;
    let (root, path) = view
        .root_of(&handle)
        .expect("root_of knows a running sandbox's root");
    assert!(
        path.is_dir(),
        "the sandbox's root {} exists on the host",
        path.display()
    );
    assert!(
        path.starts_with(view.roots()),
        "the root {} lies under the view's roots {}",
        path.display(),
        view.roots().display()
    );
    assert_eq!(
        view.locate(&path),
        Some((root.clone(), PathBuf::new())),
        "locate maps the root back to its own name"
    );
    assert_eq!(
        view.locate(&path.join("workspace/conf")),
        Some((root.clone(), PathBuf::from("workspace/conf"))),
        "locate maps a dir under the root to the root and the path inside"
    );
    assert_eq!(
        view.handle_of(&root).as_deref(),
        Some(handle.as_str()),
        "handle_of the root gives the sandbox's handle"
    );
    let (_, _, code) = run(
        rt,
        &handle,
        isolation,
        &["sh", "-c", "echo seen > /workspace/seen-by-host"],
    )
    .await;
    assert_eq!(code, 0, "the sandbox writes a file");
    let written = path.join("workspace/seen-by-host");
    poll(
        "a file the sandbox wrote is seen from the host under its root",
        || async {
            std::fs::read(&written)
                .ok()
                .filter(|content| content == b"seen\n")
                .map(|_| ())
                .ok_or_else(|| written.display().to_string())
        },
    )
    .await;
    cage.finish().await;
}

async fn staged_sandbox_is_promoted_in_place_of_the_original(
    rt: &dyn Runtime,
    isolation: Isolation,
) {
    let mut cage = Cage::new(rt, isolation);
    let (spec, original) = cage.create().await;
    let staged = rt
        .create_staged(&spec)
        .await
        .expect("create_staged beside the original");
    cage.handles.push(staged.clone());
    assert_ne!(
        staged, original,
        "the staged sandbox is a sandbox of its own"
    );
    let listed = rt.list(&cage.installation).await.expect("list");
    assert_eq!(listed.len(), 2, "both sandboxes are listed: {listed:?}");
    assert!(
        listed.iter().all(|c| c.sandbox_id == Some(spec.id)),
        "both carry the sandbox's id: {listed:?}"
    );
    let (stdout, _, _) = run(rt, &staged, isolation, &["echo", "staged"]).await;
    assert_eq!(stdout, "staged\n", "the staged sandbox runs commands");
    rt.destroy(&original).await.expect("destroy the original");
    rt.promote(&staged, &spec)
        .await
        .expect("promote the staged sandbox");
    let listed = rt
        .list(&cage.installation)
        .await
        .expect("list after promote");
    assert_eq!(
        listed.len(),
        1,
        "only the promoted sandbox is left: {listed:?}"
    );
    assert_eq!(
        listed[0].container_id, staged,
        "the promoted sandbox keeps its handle"
    );
    assert_eq!(
        listed[0].sandbox_id,
        Some(spec.id),
        "it is listed with the sandbox's id"
    );
    assert_eq!(listed[0].state, EngineState::Running, "it is running");
    let (stdout, _, code) = run(rt, &staged, isolation, &["echo", "promoted"]).await;
    assert_eq!(
        (stdout.as_str(), code),
        ("promoted\n", 0),
        "the promoted sandbox runs commands"
    );
    cage.finish().await;
}

async fn destroy_is_idempotent_and_the_sandbox_is_gone(rt: &dyn Runtime, isolation: Isolation) {
    let mut cage = Cage::new(rt, isolation);
    let (_, handle) = cage.create().await;
    rt.destroy(&handle).await.expect("destroy");
    rt.destroy(&handle)
        .await
        .expect("destroying a sandbox that is already gone is Ok");
    match rt.describe(&handle).await {
        Err(RuntimeError::ContainerGone) => {}
        other => panic!("describe of a destroyed sandbox is ContainerGone, not {other:?}"),
    }
    match rt.exec(&handle, &exec_spec(&["true"], isolation)).await {
        Err(RuntimeError::ContainerGone) => {}
        Err(other) => panic!("exec in a destroyed sandbox is ContainerGone, not {other:?}"),
        Ok(_) => panic!("exec in a destroyed sandbox started"),
    }
    let listed = rt.list(&cage.installation).await.expect("list");
    assert!(
        listed.is_empty(),
        "a destroyed sandbox is not listed: {listed:?}"
    );
    cage.finish().await;
}

async fn unknown_template_is_template_missing_and_leaves_nothing(
    rt: &dyn Runtime,
    isolation: Isolation,
) {
    let cage = Cage::new(rt, isolation);
    let unknown = format!("no-such-template-{}", caged_domain::random_hex(3));
    let spec = spec(&cage.installation, isolation, &unknown);
    match rt.create(&spec).await {
        Err(RuntimeError::TemplateMissing { template, known }) => {
            assert_eq!(
                template, unknown,
                "TemplateMissing names the template asked for"
            );
            assert!(
                known.iter().any(|name| name == TEMPLATE),
                "TemplateMissing lists the known templates ({known:?}), {TEMPLATE} among them"
            );
        }
        Err(other) => panic!("create from an unknown template is TemplateMissing, not {other:?}"),
        Ok(handle) => {
            let _ = rt.destroy(&handle).await;
            panic!("create from an unknown template succeeded");
        }
    }
    let listed = rt.list(&cage.installation).await.expect("list");
    assert!(
        listed.is_empty(),
        "a failed create leaves nothing behind: {listed:?}"
    );
    cage.finish().await;
}

async fn commands_run_as_the_user_asked(rt: &dyn Runtime, isolation: Isolation) {
    let mut cage = Cage::new(rt, isolation);
    let (_, handle) = cage.create().await;
    let ids = |user: Option<&str>| {
        let spec = ExecSpec {
            cmd: argv(&["sh", "-c", "echo $(id -u):$(id -g) $HOME $USER"]),
            isolation,
            user: user.map(str::to_string),
            ..ExecSpec::default()
        };
        let handle = handle.clone();
        async move {
            let exec = rt.exec(&handle, &spec).await.expect("exec");
            let (stdout, _) = collect(exec.output, "id").await;
            stdout
        }
    };
    assert_eq!(
        ids(Some("user")).await.trim(),
        "1000:1000 /home/user user",
        "a command asked to run as the template's user does, with its HOME and USER"
    );
    assert_eq!(
        ids(Some(caged_runtime::ROOT_USER)).await.trim(),
        "0:0 /root root",
        "a command asked to run as root does"
    );
    assert!(
        ids(None).await.starts_with("0:0 /root"),
        "a command that names no user runs as root"
    );
    // Root's commands keep root's bounded capabilities whoever else runs in the sandbox: the
    // platform kills a command's tree as root.
    let spec = ExecSpec {
        cmd: argv(&["sh", "-c", "sleep 600 >/dev/null 2>&1 </dev/null & echo $!"]),
        isolation,
        user: Some("user".into()),
        ..ExecSpec::default()
    };
    let exec = rt.exec(&handle, &spec).await.expect("exec");
    let (pid, _) = collect(exec.output, "a user's sleep").await;
    let spec = ExecSpec {
        cmd: argv(&[
            "sh",
            "-c",
            &format!("kill -KILL {} && echo killed", pid.trim()),
        ]),
        isolation,
        user: Some(caged_runtime::ROOT_USER.into()),
        ..ExecSpec::default()
    };
    let exec = rt.exec(&handle, &spec).await.expect("exec");
    let (stdout, stderr) = collect(exec.output, "root's kill").await;
    assert_eq!(
        stdout.trim(),
        "killed",
        "root kills the user's process: {stderr}"
    );
    cage.finish().await;
}

/// What [`templates_describe_themselves_and_are_removed`] imports: a template without a manifest.
const BARE_TEMPLATE: &str = "conformance-bare";

async fn templates_describe_themselves_and_are_removed(rt: &dyn Runtime, _: Isolation) {
    let listed = rt.templates().await.expect("templates are listed");
    let busybox = listed
        .iter()
        .find(|template| template.name == TEMPLATE)
        .expect("the suite's template is listed");
    let manifest = busybox.manifest.as_ref().unwrap_or_else(|| {
        panic!("{TEMPLATE} carries /etc/caged/template.json (rebuild it: sudo scripts/build-templates {TEMPLATE})")
    });
    assert!(
        manifest.tools.contains_key("busybox") && manifest.recipe.is_some(),
        "the manifest names the template's tools and recipe: {manifest:?}"
    );

    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o755);
    header.set_size(0);
    tar.append_data(&mut header, "workspace", std::io::empty())
        .expect("tar");
    let tar = Bytes::from(tar.into_inner().expect("tar"));
    let body: ByteStream = Box::pin(futures_util::stream::once(async move { Ok(tar) }));
    let bare = rt
        .import_template(BARE_TEMPLATE, body)
        .await
        .expect("a template of one folder imports");
    assert_eq!(
        bare.manifest, None,
        "a template that says nothing has no manifest"
    );
    rt.remove_template(BARE_TEMPLATE)
        .await
        .expect("a template is removed");
    let names: Vec<String> = rt
        .templates()
        .await
        .expect("templates are listed")
        .into_iter()
        .map(|template| template.name)
        .collect();
    assert!(
        !names.iter().any(|name| name == BARE_TEMPLATE)
            && names.iter().any(|name| name == TEMPLATE),
        "a removed template is no longer listed, and only it: {names:?}"
    );
    match rt.remove_template(BARE_TEMPLATE).await {
        Err(RuntimeError::TemplateMissing { template, .. }) => assert_eq!(template, BARE_TEMPLATE),
        other => panic!("removing a template that is gone is TemplateMissing, not {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The sandboxes one behaviour made, under an installation id of its own. [`Cage::finish`]
/// destroys them and checks nothing is left; dropped unfinished (a failed check), it destroys
/// them anyway, blocking the (multi-threaded) runtime's worker until it has.
struct Cage<'a> {
    rt: &'a dyn Runtime,
    isolation: Isolation,
    installation: String,
    handles: Vec<String>,
    finished: bool,
}

impl<'a> Cage<'a> {
    fn new(rt: &'a dyn Runtime, isolation: Isolation) -> Cage<'a> {
        Cage {
            rt,
            isolation,
            installation: caged_domain::random_hex(6),
            handles: Vec::new(),
            finished: false,
        }
    }

    /// A busybox sandbox, created and running.
    async fn create(&mut self) -> (SandboxSpec, String) {
        let spec = spec(&self.installation, self.isolation, TEMPLATE);
        let handle = self
            .rt
            .create(&spec)
            .await
            .unwrap_or_else(|err| panic!("create a {TEMPLATE} sandbox: {err}"));
        self.handles.push(handle.clone());
        (spec, handle)
    }

    /// Destroys what the check made and makes sure nothing of it is left. (A failure here
    /// leaves `finished` unset, so `Drop` tries again.)
    async fn finish(mut self) {
        for handle in &self.handles {
            self.rt
                .destroy(handle)
                .await
                .expect("destroy what the check made");
        }
        sweep(self.rt, &self.installation).await;
        let left = self.rt.list(&self.installation).await.expect("list");
        assert!(
            left.is_empty(),
            "nothing of the check is left on the engine: {left:?}"
        );
        self.finished = true;
    }
}

impl Drop for Cage<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            eprintln!(
                "cannot clean up installation {}: no runtime",
                self.installation
            );
            return;
        };
        tokio::task::block_in_place(|| {
            runtime.block_on(async {
                for handle in &self.handles {
                    if let Err(err) = self.rt.destroy(handle).await {
                        eprintln!("cleanup: destroying {handle} failed: {err}");
                    }
                }
                sweep(self.rt, &self.installation).await;
            })
        });
    }
}

/// Destroys whatever the engine still lists for `installation`.
async fn sweep(rt: &dyn Runtime, installation: &str) {
    match rt.list(installation).await {
        Ok(left) => {
            for container in left {
                if let Err(err) = rt.destroy(&container.container_id).await {
                    eprintln!(
                        "cleanup: destroying {} failed: {err}",
                        container.container_id
                    );
                }
            }
        }
        Err(err) => eprintln!("cleanup: listing installation {installation} failed: {err}"),
    }
}

fn spec(installation: &str, isolation: Isolation, template: &str) -> SandboxSpec {
    SandboxSpec {
        id: SandboxId::random(),
        account_id: "conformance".into(),
        installation_id: installation.into(),
        template: template.into(),
        isolation,
        resources: Resources {
            cpu: 0.5,
            memory: 256,
            disk: 1,
        },
        network_mode: NetworkMode::None,
        env: [(MARK.to_string(), installation.to_string())].into(),
        enforce_disk: false,
        pids_limit: DEFAULT_PIDS_LIMIT,
        link: None,
    }
}

fn argv(cmd: &[&str]) -> Vec<String> {
    cmd.iter().map(|part| part.to_string()).collect()
}

fn exec_spec(cmd: &[&str], isolation: Isolation) -> ExecSpec {
    ExecSpec {
        cmd: argv(cmd),
        isolation,
        ..ExecSpec::default()
    }
}

/// Runs a command to its end: (stdout, stderr, exit status).
async fn run(
    rt: &dyn Runtime,
    handle: &str,
    isolation: Isolation,
    cmd: &[&str],
) -> (String, String, i64) {
    let exec = rt
        .exec(handle, &exec_spec(cmd, isolation))
        .await
        .unwrap_or_else(|err| panic!("exec {cmd:?}: {err}"));
    drop(exec.input);
    let (stdout, stderr) = collect(exec.output, &format!("{cmd:?}")).await;
    let code = exec
        .control
        .wait()
        .await
        .unwrap_or_else(|err| panic!("wait for {cmd:?}: {err}"))
        .unwrap_or_else(|| panic!("{cmd:?} ended but its exit status is unknown"));
    (stdout, stderr, code)
}

/// A started command's output, as [`Exec::output`] has it.
type Output =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = caged_runtime::Result<ExecOutput>> + Send>>;

/// A command's whole output, stdout and stderr apart.
async fn collect(mut output: Output, what: &str) -> (String, String) {
    let gathered = tokio::time::timeout(DEADLINE, async {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(item) = output.next().await {
            match item.unwrap_or_else(|err| panic!("output of {what}: {err}")) {
                ExecOutput::Stdout(bytes) => stdout.extend_from_slice(&bytes),
                ExecOutput::Stderr(bytes) => stderr.extend_from_slice(&bytes),
            }
        }
        (stdout, stderr)
    })
    .await
    .unwrap_or_else(|_| panic!("the output of {what} did not end within {DEADLINE:?}"));
    (
        String::from_utf8_lossy(&gathered.0).into_owned(),
        String::from_utf8_lossy(&gathered.1).into_owned(),
    )
}

/// Reads a running command's stdout until it has printed `marker` (so it is known to run).
async fn wait_for_stdout(exec: &mut Exec, marker: &str) {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(DEADLINE, async {
        while let Some(item) = exec.output.next().await {
            if let Ok(ExecOutput::Stdout(bytes)) = item {
                seen.extend_from_slice(&bytes);
                if String::from_utf8_lossy(&seen).contains(marker) {
                    return true;
                }
            }
        }
        false
    })
    .await;
    assert_eq!(
        found,
        Ok(true),
        "the command printed {marker:?} (it printed {:?})",
        String::from_utf8_lossy(&seen)
    );
}

/// Asks `condition` until it holds, for at most [`DEADLINE`]; fails with `what` and the last
/// thing it said otherwise.
async fn poll<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        match condition().await {
            Ok(()) => return,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not so within {DEADLINE:?}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn listed_state(rt: &dyn Runtime, installation: &str, handle: &str) -> EngineState {
    let listed = rt.list(installation).await.expect("list");
    listed
        .into_iter()
        .find(|container| container.container_id == handle)
        .unwrap_or_else(|| panic!("the sandbox {handle} is listed"))
        .state
}

/// A dir `conf/` (0755) holding `app.txt` (0640), as an uncompressed tar.
fn small_tar() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_mtime(1_700_000_000);
    builder
        .append_data(&mut dir, "conf/", std::io::empty())
        .expect("tar dir");
    let mut file = tar::Header::new_gnu();
    file.set_entry_type(tar::EntryType::Regular);
    file.set_mode(0o640);
    file.set_size(FILE_CONTENT.len() as u64);
    file.set_mtime(1_700_000_000);
    builder
        .append_data(&mut file, "conf/app.txt", FILE_CONTENT)
        .expect("tar file");
    builder.into_inner().expect("tar finished")
}

async fn read_all(mut stream: ByteStream) -> Vec<u8> {
    let mut all = Vec::new();
    let read = tokio::time::timeout(DEADLINE, async {
        while let Some(chunk) = stream.next().await {
            all.extend_from_slice(&chunk.expect("a tar stream chunk"));
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the tar stream did not end within {DEADLINE:?}"
    );
    all
}

/// The contents of the entry at `path` (leading `/` and `./` ignored), if the tar has it.
fn tar_entry(tar: &[u8], path: &str) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().expect("a readable tar") {
        let mut entry = entry.expect("a readable tar entry");
        let name = entry
            .path()
            .expect("an entry path")
            .to_string_lossy()
            .into_owned();
        if name.trim_start_matches("./").trim_start_matches('/') == path {
            let mut content = Vec::new();
            entry
                .read_to_end(&mut content)
                .expect("the entry's contents");
            return Some(content);
        }
    }
    None
}
