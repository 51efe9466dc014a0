//! Supervising the app of `meshpipe run`: starting it so that it dies with
//! the proxy, and reaping exited children, the orphans included when
//! meshpipe is PID 1 of a container.
//!
//! Node's `child_process.spawn` cannot run code between `fork` and `exec`,
//! which is where `PR_SET_PDEATHSIG` must be set; so the app is spawned here
//! (`sys::spawn_with_parent_death_signal`) and, libuv not knowing about it,
//! reaped here too. The kernel sends the signal when the *thread* that forked
//! the app ends, so the TypeScript layer calls [`spawn`] on its main thread,
//! which lives as long as the process.
//!
//! Reaping never takes a status that belongs to someone else: [`reap_pid`]
//! waits for one pid, and [`reap_all_except`] (for PID 1, where the kernel
//! reparents every orphan of the container to meshpipe) first looks at an
//! exited child without reaping it (`waitid(WNOWAIT)`) and leaves the pids it
//! is told to keep (children libuv spawned and will reap itself) alone.

use std::collections::BTreeMap;
use std::io;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::sys::{self, ChildExit};

/// Errors of reaping (spawning reports its failure as a [`SpawnOutcome`]).
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("waiting for child {pid}: {source}")]
    Wait { pid: i64, source: io::Error },
}

/// The command to run.
#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpawnSpec {
    /// A path, or a name looked up in the `PATH` of `env`.
    pub command: String,
    pub args: Vec<String>,
    /// The whole environment of the app (none inherited besides).
    pub env: BTreeMap<String, String>,
}

/// What [`spawn`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum SpawnOutcome {
    Spawned {
        pid: u32,
    },
    /// `errno` is `ENOENT` (not found), `EACCES` (not executable) or another
    /// errno name; `message` is the system's description.
    Failed {
        errno: String,
        message: String,
    },
}

/// A reaped child: `code` when it exited, `signal` (the number) when a signal ended it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct ReapedChild {
    pub pid: u32,
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// Starts `spec` with stdio inherited; the app gets SIGKILL if the calling
/// thread (meshpipe) dies first, even by SIGKILL.
pub fn spawn(spec: &SpawnSpec) -> SpawnOutcome {
    let mut cmd = Command::new(&spec.command);
    cmd.args(&spec.args).env_clear().envs(&spec.env);
    match sys::spawn_with_parent_death_signal(&mut cmd, libc::SIGKILL) {
        // The `Child` handle is dropped without waiting: reaping is ours.
        Ok(child) => SpawnOutcome::Spawned { pid: child.id() },
        Err(e) => SpawnOutcome::Failed { errno: errno_name(&e).to_string(), message: e.to_string() },
    }
}

fn errno_name(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::EACCES) => "EACCES",
        Some(libc::ENOEXEC) => "ENOEXEC",
        Some(libc::ENOTDIR) => "ENOTDIR",
        Some(libc::E2BIG) => "E2BIG",
        Some(libc::ENOMEM) => "ENOMEM",
        Some(libc::EAGAIN) => "EAGAIN",
        _ if e.kind() == io::ErrorKind::InvalidInput => "EINVAL",
        _ => "EOTHER",
    }
}

fn reaped(pid: i32, exit: ChildExit) -> ReapedChild {
    let (code, signal) = match exit {
        ChildExit::Exited(c) => (Some(c), None),
        ChildExit::Signaled(s) => (None, Some(s)),
    };
    ReapedChild { pid: pid as u32, code, signal }
}

/// Reaps `pid` if it has exited; `None` while it runs.
pub fn reap_pid(pid: u32) -> Result<Option<ReapedChild>, SuperviseError> {
    let p = pid as i32;
    Ok(sys::reap_child(p).map_err(|source| SuperviseError::Wait { pid: p.into(), source })?.map(|e| reaped(p, e)))
}

/// Reaps every exited child except those in `keep`, stopping at the first
/// exited one that is kept (it is left for its owner; the next call after
/// the owner reaped it goes on past it).
pub fn reap_all_except(keep: &[u32]) -> Result<Vec<ReapedChild>, SuperviseError> {
    let mut out = Vec::new();
    loop {
        let pid = sys::peek_exited_child().map_err(|source| SuperviseError::Wait { pid: -1, source })?;
        let Some(pid) = pid else { return Ok(out) };
        if keep.contains(&(pid as u32)) {
            return Ok(out);
        }
        match sys::reap_child(pid) {
            Ok(Some(exit)) => out.push(reaped(pid, exit)),
            // Reaped by someone else in between: look again.
            Ok(None) => {}
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {}
            Err(source) => return Err(SuperviseError::Wait { pid: pid.into(), source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn spec(command: &str, args: &[&str]) -> SpawnSpec {
        SpawnSpec { command: command.into(), args: args.iter().map(|s| s.to_string()).collect(), env: std::env::vars().collect() }
    }

    fn spawned(s: &SpawnSpec) -> u32 {
        match spawn(s) {
            SpawnOutcome::Spawned { pid } => pid,
            other => panic!("{other:?}"),
        }
    }

    /// No event tells a parent that a child became reapable except SIGCHLD,
    /// which the test harness does not own: poll, with a generous bound.
    fn wait_reaped(pid: u32) -> ReapedChild {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(r) = reap_pid(pid).unwrap() {
                return r;
            }
            assert!(Instant::now() < deadline, "child {pid} did not exit");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    // One test: reaping "every child" in parallel tests would take the
    // children of the others.
    #[test]
    fn spawn_reap_and_the_parent_death_signal() {
        // Exit codes and signals.
        let pid = spawned(&spec("sh", &["-c", "exit 3"]));
        assert_eq!(wait_reaped(pid), ReapedChild { pid, code: Some(3), signal: None });
        let pid = spawned(&spec("sh", &["-c", "kill -TERM $$"]));
        assert_eq!(wait_reaped(pid).signal, Some(libc::SIGTERM));

        // Not found / not executable.
        match spawn(&spec("/nonexistent/meshpipe-app", &[])) {
            SpawnOutcome::Failed { errno, message } => assert!(errno == "ENOENT" && message.contains("No such file"), "{errno} {message}"),
            other => panic!("{other:?}"),
        }
        let not_executable = std::env::temp_dir().join(format!("meshpipe-not-executable-{}", std::process::id()));
        std::fs::write(&not_executable, "#!/bin/sh\n").unwrap();
        let outcome = spawn(&spec(not_executable.to_str().unwrap(), &[]));
        let _ = std::fs::remove_file(&not_executable);
        match outcome {
            SpawnOutcome::Failed { errno, .. } => assert_eq!(errno, "EACCES"),
            other => panic!("{other:?}"),
        }

        // stdio is inherited (the Node tests check it with Node's close-on-exec stdio).
        let pid = spawned(&spec("sh", &["-c", "test -e /proc/self/fd/0 && test -e /proc/self/fd/1 && test -e /proc/self/fd/2"]));
        assert_eq!(wait_reaped(pid).code, Some(0), "fds 0-2 open in the app");

        // The environment is exactly the one given.
        let mut s = spec("sh", &["-c", r#"test "$MESHPIPE_ONLY" = yes && test -z "$HOME" "#]);
        s.env = [("MESHPIPE_ONLY".to_string(), "yes".to_string()), ("PATH".into(), std::env::var("PATH").unwrap())].into();
        assert_eq!(wait_reaped(spawned(&s)).code, Some(0));

        // The signal fires when the spawning *thread* ends.
        let sleeper = std::thread::spawn(|| spawned(&spec("sleep", &["100"]))).join().unwrap();
        assert_eq!(wait_reaped(sleeper).signal, Some(libc::SIGKILL), "killed when its parent thread ended");

        // A kept child is left to its owner; the others are reaped.
        let kept = spawned(&spec("true", &[]));
        let deadline = Instant::now() + Duration::from_secs(20);
        while sys::peek_exited_child().unwrap() != Some(kept as i32) {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(reap_all_except(&[kept]).unwrap().is_empty());
        assert_eq!(wait_reaped(kept).code, Some(0), "still reapable by its owner");
        let a = spawned(&spec("true", &[]));
        let b = spawned(&spec("false", &[]));
        let mut got = Vec::new();
        while got.len() < 2 {
            got.extend(reap_all_except(&[]).unwrap());
            assert!(Instant::now() < deadline + Duration::from_secs(20));
            std::thread::sleep(Duration::from_millis(2));
        }
        got.sort_by_key(|r| r.pid);
        let mut want = vec![ReapedChild { pid: a, code: Some(0), signal: None }, ReapedChild { pid: b, code: Some(1), signal: None }];
        want.sort_by_key(|r| r.pid);
        assert_eq!(got, want);
        assert!(reap_all_except(&[]).unwrap().is_empty());
    }
}
