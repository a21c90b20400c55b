//! The `meridian` binary: `check` on good and bad files, and usage errors.

use std::process::Command;

fn meridian(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_every_shipped_config_and_prints_a_summary() {
    for file in ["config/meridian.toml", "config/demo.toml"] {
        let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
        let (code, out, err) = meridian(&["check", "-c", &path]);
        assert_eq!(code, 0, "{file}: {err}");
        assert!(out.contains(": OK"), "{out}");
        assert!(
            out.contains("regions:") && out.contains("failover:"),
            "{out}"
        );
        assert!(out.contains("listen: http"), "{out}");
    }
}

#[test]
fn check_names_file_line_and_key_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[region]]\nname = \"us\"\nfailover = [\"mars\"]\nbackends = [\"http://10.0.0.1:80\"]\n[region.health]\nrise = 0\n",
    )
    .unwrap();
    let (code, out, err) = meridian(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.is_empty(), "{out}");
    let file = path.display().to_string();
    assert!(
        err.contains(&format!(
            "{file}:3:13: `region[0].failover[0]`: unknown region \"mars\""
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{file}:6:8: `region[0].health.rise`")),
        "{err}"
    );
    assert!(err.contains("2 errors found"), "{err}");
}

#[test]
fn check_opens_the_geoip_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("country.mmdb");
    std::fs::write(&db, b"not a database").unwrap();
    let path = dir.path().join("geo.toml");
    std::fs::write(
        &path,
        format!(
            "[geo]\ndatabase = \"{}\"\n[[region]]\nname = \"us\"\nbackends = [\"http://10.0.0.1:80\"]\n",
            db.display()
        ),
    )
    .unwrap();
    let (code, _, err) = meridian(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("`geo.database`") && err.contains(&db.display().to_string()),
        "{err}"
    );
    let path = dir.path().join("default.toml");
    std::fs::write(
        &path,
        "[[region]]\nname = \"us\"\nbackends = [\"http://10.0.0.1:80\"]\n",
    )
    .unwrap();
    let (code, out, _) = meridian(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("geoip: built-in iptoasn-country"), "{out}");
}

#[test]
fn check_reports_a_missing_file() {
    let (code, _, err) = meridian(&["check", "-c", "/nonexistent/meridian.toml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot read configuration file /nonexistent/meridian.toml"),
        "{err}"
    );
}

#[test]
fn help_lists_the_commands_and_no_arguments_is_a_usage_error() {
    let (code, out, _) = meridian(&["--help"]);
    assert_eq!(code, 0);
    for word in ["run", "check", "demo", "-c, --config"] {
        assert!(out.contains(word), "{word} missing from help:\n{out}");
    }
    let (code, _, err) = meridian(&[]);
    assert_eq!(code, 2);
    assert!(err.contains("meridian demo"), "{err}");
}

#[test]
fn run_refuses_an_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[listen]\nhtp = \"0.0.0.0:80\"\n").unwrap();
    let (code, _, err) = meridian(&["-c", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("`listen.htp`: unknown key"), "{err}");
}

/// Starts the binary on `config`, returning the child once `port` accepts.
async fn spawn_meridian(config: &std::path::Path, port: u16) -> std::process::Child {
    let child = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["run", "-c", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starts");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "meridian did not listen on {port}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child
}

mod common;

/// A configuration file for one region on `backend`, its public listener on
/// a port free at the time of asking, and `extra` more TOML; the directory
/// holding it, its path and the port.
fn config_on_a_free_port(
    backend: &common::Backend,
    extra: &str,
) -> (tempfile::TempDir, std::path::PathBuf, u16) {
    use common::*;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = config_text(&[R("us", &[backend], &[])], extra).replace(
        "127.0.0.1:0\"\n\n[admin]",
        &format!("127.0.0.1:{port}\"\n\n[admin]"),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path, port)
}

#[tokio::test]
async fn sigterm_lets_a_request_in_flight_finish_then_exits_zero() {
    use common::*;
    let us1 = Backend::start("us-1").await;
    let (_dir, path, port) = config_on_a_free_port(&us1, "");
    let mut child = spawn_meridian(&path, port).await;

    let base = format!("http://127.0.0.1:{port}");
    let fetch = |path: String| async move {
        let req = empty(http::Method::GET, path);
        let resp = client().request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    let ready = base.clone();
    wait_for(
        std::time::Duration::from_secs(10),
        "the backend is up behind the binary",
        || {
            let url = format!("{ready}/");
            async move { matches!(fetch(url).await, Ok((s, _)) if s == 200) }
        },
    )
    .await;

    let hits_before = us1.hits.load(std::sync::atomic::Ordering::Relaxed);
    let slow = tokio::spawn(fetch(format!("{base}/slow?ms=800")));
    wait_for(
        std::time::Duration::from_secs(5),
        "the slow request reached the backend",
        || async { us1.hits.load(std::sync::atomic::Ordering::Relaxed) > hits_before },
    )
    .await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    let (status, body) = slow
        .await
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(status, 200);
    assert_eq!(body, "slow answer from us-1");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "meridian did not exit after SIGTERM"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn sighup_reloads_the_configuration_file() {
    use common::*;
    let (us1, us2) = (Backend::start("us-1").await, Backend::start("us-2").await);
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (port, admin) = (free_port(), free_port());
    let text = |backends: &[&Backend]| {
        config_text(&[R("us", backends, &[])], "")
            .replace(
                "127.0.0.1:0\"\n\n[admin]",
                &format!("127.0.0.1:{port}\"\n\n[admin]"),
            )
            .replace(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:{admin}\""),
            )
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(&path, text(&[&us1])).unwrap();
    let mut child = spawn_meridian(&path, port).await;
    let backends = || async move {
        let req = empty(
            http::Method::GET,
            format!("http://127.0.0.1:{admin}/api/v1/status"),
        );
        let Ok(resp) = client().request(req).await else {
            return 0;
        };
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["regions"][0]["backends"].as_array().map_or(0, Vec::len)
    };
    wait_for(
        std::time::Duration::from_secs(10),
        "the admin API answers",
        || async { backends().await == 1 },
    )
    .await;
    std::fs::write(&path, text(&[&us1, &us2])).unwrap();
    let sent = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    wait_for(
        std::time::Duration::from_secs(10),
        "the new backend is listed",
        || async { backends().await == 2 },
    )
    .await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP does not stop Meridian"
    );
    child.kill().unwrap();
    let _ = child.wait();
}

#[tokio::test]
async fn the_access_log_is_one_json_object_per_request_with_the_decision() {
    use common::*;
    let us1 = Backend::start("us-1").await;
    let (dir, path, port) = config_on_a_free_port(&us1, "[log]\nformat = \"json\"\n");
    let log_path = dir.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["run", "-c", path.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("starts");
    let url = format!("http://127.0.0.1:{port}/hello?x=1");
    wait_for(
        std::time::Duration::from_secs(10),
        "a 200 through the binary",
        || {
            let url = url.clone();
            async move {
                match client().request(empty(http::Method::GET, url)).await {
                    Ok(resp) => resp.status() == 200,
                    Err(_) => false,
                }
            }
        },
    )
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap();
    let mut access = Vec::new();
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
        if v["target"] == "meridian::access" {
            access.push(v);
        }
    }
    let served = access
        .iter()
        .find(|v| v["status"] == 200)
        .unwrap_or_else(|| panic!("no access event for the 200:\n{log}"));
    assert_eq!(served["client"], "127.0.0.1");
    assert_eq!(served["preferred"], "us");
    assert_eq!(served["served"], "us");
    assert_eq!(served["retries"], 0);
    assert_eq!(served["method"], "GET");
    assert_eq!(served["path"], "/hello");
    assert!(served["ms"].is_u64(), "{served}");
    assert!(served["why"].is_string(), "{served}");
}

#[tokio::test]
async fn output_to_a_reader_that_went_away_ends_quietly() {
    // `meridian check | head -1`: the pipe's reader is gone before the
    // summary is written.
    let (writer, reader) = tokio::net::unix::pipe::pipe().unwrap();
    drop(reader);
    let stdout = writer.into_blocking_fd().unwrap();
    let path = format!("{}/config/meridian.toml", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["check", "-c", &path])
        .stdout(std::process::Stdio::from(stdout))
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}

/// The running proxy has transparent huge pages off (`THP_enabled: 0` in
/// its `/proc/PID/status`), while this test process keeps the system's
/// default: mimalloc's huge pages made RSS jump under steady load.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_running_proxy_has_transparent_huge_pages_off() {
    let thp = |pid: &str| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("THP_enabled:"))
            .map(|v| v.trim().to_owned())
    };
    // A kernel without the field, or a test process that inherited the
    // flag already, leaves nothing to tell apart.
    if thp("self").as_deref() != Some("1") {
        eprintln!("huge pages are not reported or already off here; nothing to check");
        return;
    }
    let backend = common::Backend::start("us-1").await;
    let (_dir, path, port) = config_on_a_free_port(&backend, "");
    let mut child = spawn_meridian(&path, port).await;
    let exited = child.try_wait().unwrap();
    let theirs = exited
        .is_none()
        .then(|| thp(&child.id().to_string()))
        .flatten();
    let _ = child.kill();
    let _ = child.wait();
    assert!(exited.is_none(), "meridian exited early: {exited:?}");
    assert_eq!(theirs.as_deref(), Some("0"));
}
