//! Running `ip` and `iptables`: exit status checked, stderr kept for the error.

use std::io::ErrorKind;
use std::process::Stdio;

use super::NetError;

/// What a finished command said.
pub(crate) struct Output {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program args…` and waits for it. Only a command that cannot be started at
/// all is an error here; the caller judges the exit status.
pub(crate) async fn output(program: &str, args: &[&str]) -> Result<Output, NetError> {
    output_with_input(program, args, None).await
}

/// [`output`], with `input` written to the command's stdin.
pub(crate) async fn output_with_input(
    program: &str,
    args: &[&str],
    input: Option<&[u8]>,
) -> Result<Output, NetError> {
    use tokio::io::AsyncWriteExt as _;
    // root's PATH usually has /usr/sbin, a service manager's may not.
    let mut last = None;
    for candidate in [
        program.to_string(),
        format!("/usr/sbin/{program}"),
        format!("/sbin/{program}"),
    ] {
        let child = tokio::process::Command::new(&candidate)
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let spawned = match child {
            Ok(mut child) => {
                if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
                    stdin.write_all(input).await.map_err(|e| {
                        NetError::Command(format!("cannot write to {program}: {e}"))
                    })?;
                }
                child.wait_with_output().await
            }
            Err(e) => Err(e),
        };
        match spawned {
            Ok(out) => {
                return Ok(Output {
                    success: out.status.success(),
                    code: out.status.code(),
                    stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
            Err(e) if e.kind() == ErrorKind::NotFound => last = Some(e),
            Err(e) => return Err(NetError::Command(format!("cannot run {program}: {e}"))),
        }
    }
    let why = last.map(|e| e.to_string()).unwrap_or_default();
    Err(NetError::Command(format!(
        "cannot run {program} ({why}): host networking needs iproute2 and iptables"
    )))
}

/// Runs `program args…`; a non-zero exit is an error naming the command and
/// carrying its stderr. Returns stdout.
pub(crate) async fn run(program: &str, args: &[&str]) -> Result<String, NetError> {
    let out = output(program, args).await?;
    if out.success {
        Ok(out.stdout)
    } else {
        Err(failed(program, args, &out))
    }
}

/// The error for a command that exited non-zero.
pub(crate) fn failed(program: &str, args: &[&str], out: &Output) -> NetError {
    let code = out
        .code
        .map(|c| c.to_string())
        .unwrap_or_else(|| "a signal".into());
    NetError::Command(format!(
        "`{program} {}` failed (exit {code}): {}",
        args.join(" "),
        out.stderr
    ))
}
