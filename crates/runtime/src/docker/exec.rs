//! Commands in a container: Docker's exec objects behind [`ExecControl`]. Under gVisor the host
//! cannot see a command's processes, so the command notes its pid inside the sandbox, where a
//! kill can find it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::query_parameters::ResizeExecOptionsBuilder;
use caged_domain::Isolation;
use futures_util::StreamExt;

use super::{container_error, engine_error};
use crate::{Exec, ExecControl, ExecOutput, ExecSpec, ROOT_USER, Result, RuntimeError, proctree};

/// Stops the process whose pid is in file `$1`, finds all its descendants through the sandbox's
/// `/proc`, and kills them all. POSIX sh and `kill` only, so it runs on any template. A command
/// killed the instant it started may not have written its pid yet: the file is waited for (5 s).
/// The command wrote the file as whoever it runs as, and this runs as root: only a pid above 1
/// whose process belongs to the file's owner is taken (never `-1`, never a process of root's
/// for a command of another user).
const KILL_TREE_SCRIPT: &str = r#"tries=0
while [ ! -s "$1" ] && [ "$tries" -lt 50 ]; do sleep 0.1; tries=$((tries + 1)); done
root=$(cat "$1" 2>/dev/null) || exit 0
case "$root" in ''|*[!0-9]*) exit 0 ;; esac
[ "$root" -gt 1 ] || exit 0
[ "$(stat -c %u "/proc/$root" 2>/dev/null)" = "$(stat -c %u "$1" 2>/dev/null)" ] || exit 0
kill -STOP "$root" 2>/dev/null
all="$root"; frontier="$root"
while [ -n "$frontier" ]; do
  next=""
  for status in /proc/[0-9]*/status; do
    pid=${status#/proc/}; pid=${pid%/status}
    parent=""
    while read -r key value; do
      if [ "$key" = "PPid:" ]; then parent=$value; break; fi
    done < "$status" 2>/dev/null
    for candidate in $frontier; do
      if [ "$parent" = "$candidate" ]; then next="$next $pid"; kill -STOP "$pid" 2>/dev/null; fi
    done
  done
  all="$all $next"; frontier=$next
done
kill -KILL $all 2>/dev/null
exit 0"#;

/// One command, as the engine knows it.
struct DockerExec {
    docker: Docker,
    container: String,
    id: String,
    /// Under gVisor: the file inside the sandbox that holds the command's pid.
    pid_file: Option<String>,
}

pub(super) async fn start(docker: Docker, container: &str, spec: &ExecSpec) -> Result<Exec> {
    let mut env: Vec<String> = spec
        .env
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    // The sandbox's USER names its own user; a command run as another says so (HOME the
    // runtime sets from the account itself).
    if let Some(user) = &spec.user
        && !spec.env.contains_key("USER")
    {
        let name = if user == ROOT_USER {
            "root"
        } else {
            user.as_str()
        };
        env.push(format!("USER={name}"));
    }
    if spec.tty && !spec.env.contains_key("TERM") {
        env.push("TERM=xterm-256color".into());
    }
    let pid_file = (spec.isolation == Isolation::Gvisor)
        .then(|| format!("/tmp/.caged-exec-{}.pid", caged_domain::random_hex(8)));
    let cmd = match &pid_file {
        Some(pid_file) => {
            let mut wrapped: Vec<String> = vec![
                "/bin/sh".into(),
                "-c".into(),
                format!("echo $$ > {pid_file}; exec \"$@\""),
                "caged-exec".into(),
            ];
            wrapped.extend(spec.cmd.iter().cloned());
            wrapped
        }
        None => spec.cmd.clone(),
    };
    let options = CreateExecOptions {
        attach_stdin: Some(spec.stdin),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(spec.tty),
        env: Some(env),
        cmd: Some(cmd),
        user: spec.user.clone(),
        working_dir: spec.cwd.clone(),
        ..Default::default()
    };
    let created = docker
        .create_exec(container, options)
        .await
        .map_err(container_error)?;
    let started = docker
        .start_exec(
            &created.id,
            Some(StartExecOptions {
                detach: false,
                tty: spec.tty,
                output_capacity: None,
            }),
        )
        .await
        .map_err(container_error)?;
    let StartExecResults::Attached { output, input } = started else {
        return Err(RuntimeError::Engine {
            status: 500,
            message: "exec started detached".into(),
        });
    };
    let output = output.map(|item| match item {
        Ok(bollard::container::LogOutput::StdErr { message }) => Ok(ExecOutput::Stderr(message)),
        Ok(other) => Ok(ExecOutput::Stdout(other.into_bytes())),
        Err(err) => Err(engine_error(err)),
    });
    Ok(Exec {
        output: Box::pin(output),
        input,
        control: Arc::new(DockerExec {
            docker,
            container: container.to_string(),
            id: created.id,
            pid_file,
        }),
    })
}

#[async_trait]
impl ExecControl for DockerExec {
    async fn host_pid(&self) -> Result<Option<i32>> {
        if self.pid_file.is_some() {
            return Ok(None);
        }
        // The engine records the pid a moment after the exec starts; a fast command may have
        // finished by then, and its pid is still recorded.
        for attempt in 0..40u64 {
            let inspect = self
                .docker
                .inspect_exec(&self.id)
                .await
                .map_err(engine_error)?;
            if let Some(pid) = inspect
                .pid
                .and_then(|pid| i32::try_from(pid).ok())
                .filter(|pid| *pid > 0)
            {
                return Ok(Some(pid));
            }
            tokio::time::sleep(Duration::from_millis(1 + attempt)).await;
        }
        Ok(None)
    }

    async fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        let options = ResizeExecOptionsBuilder::default()
            .w(cols as i32)
            .h(rows as i32)
            .build();
        self.docker
            .resize_exec(&self.id, options)
            .await
            .map_err(engine_error)
    }

    async fn kill(&self) -> Result<()> {
        // The engine answers the start before its process runs: not running and no exit code
        // yet means "about to start", so wait for it to run (or end) instead of taking it for
        // ended and leaving it running.
        let mut pid = None;
        for attempt in 0..100u64 {
            let inspect = self
                .docker
                .inspect_exec(&self.id)
                .await
                .map_err(engine_error)?;
            if inspect.running != Some(true) && inspect.exit_code.is_some() {
                return Ok(());
            }
            if inspect.running == Some(true) {
                if self.pid_file.is_some() {
                    break;
                }
                pid = inspect
                    .pid
                    .and_then(|pid| i32::try_from(pid).ok())
                    .filter(|pid| *pid > 0);
                if pid.is_some() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(1 + attempt.min(49))).await;
        }
        if let Some(pid_file) = &self.pid_file {
            return kill_inside(&self.docker, &self.container, pid_file).await;
        }
        let Some(pid) = pid else {
            return Err(RuntimeError::KillFailed {
                reason: "the engine did not report the command's process".into(),
            });
        };
        tokio::task::spawn_blocking(move || proctree::kill_tree(pid))
            .await
            .map_err(|err| RuntimeError::KillFailed {
                reason: err.to_string(),
            })?
            .map_err(|err| RuntimeError::KillFailed {
                reason: format!("reading /proc: {err}"),
            })?;
        Ok(())
    }

    async fn wait(&self) -> Result<Option<i64>> {
        // The engine closes the output a moment before it records the exit code; wait for it.
        for attempt in 0..50 {
            let inspect = self
                .docker
                .inspect_exec(&self.id)
                .await
                .map_err(engine_error)?;
            if inspect.running != Some(true)
                && let Some(code) = inspect.exit_code
            {
                return Ok(Some(code));
            }
            tokio::time::sleep(Duration::from_millis(2 + attempt * 2)).await;
        }
        Ok(None)
    }
}

/// Kills a command and its descendants from inside the sandbox, for runtimes whose processes
/// the host cannot see (gVisor). This runs the sandbox's own `sh`, so a sandbox that replaced
/// it can keep its own processes alive; it can never reach anything else.
async fn kill_inside(docker: &Docker, container: &str, pid_file: &str) -> Result<()> {
    let script = format!("{KILL_TREE_SCRIPT}\nrm -f {pid_file}");
    let spec = ExecSpec {
        cmd: vec![
            "/bin/sh".into(),
            "-c".into(),
            script,
            "caged-kill".into(),
            pid_file.into(),
        ],
        // Whoever ran the command, only root can be sure to stop all it started.
        user: Some(ROOT_USER.into()),
        ..ExecSpec::default()
    };
    let kill = start(docker.clone(), container, &spec).await?;
    drop(kill.input);
    let mut output = kill.output;
    while output.next().await.is_some() {}
    match kill.control.wait().await? {
        Some(0) => Ok(()),
        other => Err(RuntimeError::KillFailed {
            reason: format!("the kill inside the sandbox ended with {other:?}"),
        }),
    }
}
