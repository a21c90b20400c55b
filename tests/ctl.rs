//! `meridian ctl`: the real binary as a subprocess against Meridian started
//! in-process, with a token: the status table, drains, the incident, and the
//! messages and exit codes of refusals and of an unreachable admin API.

mod common;

use std::time::Duration;

use common::*;

const TOKEN: &str = "s3cret-token";

/// Exit code, standard output and standard error of one run.
struct Run {
    code: i32,
    out: String,
    err: String,
}

/// Runs `meridian ctl ARGS` with `token` in `MERIDIAN_ADMIN_TOKEN`, and
/// nothing from the test's own environment.
async fn ctl(args: &[&str], token: Option<&str>) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_meridian"));
    command
        .arg("ctl")
        .args(args)
        .env_remove("MERIDIAN_ADMIN")
        .env_remove("MERIDIAN_ADMIN_TOKEN");
    if let Some(t) = token {
        command.env("MERIDIAN_ADMIN_TOKEN", t);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("ctl finishes within 30 s")
        .expect("ctl runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Two healthy regions, us and eu (two backends), failing over to each
/// other, behind a token in a file in `dir`; returns Meridian and the admin
/// API's URL.
async fn two_regions(
    dir: &std::path::Path,
    us: &[&Backend],
    eu: &[&Backend],
) -> (meridian::server::Running, String) {
    let token_path = dir.join("token");
    std::fs::write(&token_path, format!("{TOKEN}\n")).unwrap();
    let text = config_text(&[R("us", us, &["eu"]), R("eu", eu, &["us"])], "").replace(
        "[admin]\n",
        &format!("[admin]\ntoken_file = \"{}\"\n", token_path.display()),
    );
    let m = start_healthy(&text, &["us", "eu"]).await;
    let url = format!("http://{}", m.admin_addr.expect("admin listener"));
    (m, url)
}

#[tokio::test]
async fn status_prints_a_table_of_regions_backends_incident_and_events() {
    let (us1, eu1, eu2) = (
        Backend::start("us-1").await,
        Backend::start("eu-1").await,
        Backend::start("eu-2").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let (m, url) = two_regions(dir.path(), &[&us1], &[&eu1, &eu2]).await;
    eu2.set_up(false);
    wait_for(Duration::from_secs(5), "eu-2 down", || async {
        m.shared.load().regions[1].backends[1].state == meridian::health::BackendState::Down
    })
    .await;

    let run = ctl(&["--admin", &url, "status"], Some(TOKEN)).await;
    assert_eq!(run.code, 0, "{}", run.err);
    let lines: Vec<&str> = run.out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["REGION", "STATE", "HEALTH", "DRAINED", "BACKENDS", "FAILOVER"],
        "{}",
        run.out
    );
    let words = |line: &str| {
        line.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        words(lines[1]),
        ["us", "healthy", "healthy", "no", "1/1", "eu"]
    );
    assert!(lines[2].starts_with("    "), "backends are indented");
    assert_eq!(
        words(lines[2]),
        [us1.addr.to_string(), "up".into(), "-".into(), "-".into()]
    );
    let eu = words(lines[3]);
    assert_eq!(
        (eu[0].as_str(), eu[4].as_str()),
        ("eu", "1/2"),
        "{}",
        run.out
    );
    assert_eq!(
        words(lines[4])[..2],
        [eu1.addr.to_string(), "up".to_owned()]
    );
    assert!(
        lines[5].contains(&eu2.addr.to_string())
            && lines[5].contains("down")
            && lines[5].contains("last error:"),
        "{}",
        run.out
    );
    assert!(run.out.contains("\nno incident\n"), "{}", run.out);
    assert!(run.out.contains("events, oldest first:"), "{}", run.out);
    assert!(
        run.out
            .lines()
            .any(|l| l.contains(&format!("eu/{}  ", eu2.addr)) && l.contains("up -> down")),
        "{}",
        run.out
    );
    assert!(!run.out.contains(TOKEN) && !run.err.contains(TOKEN));

    // --json prints the API's own answer, before or after the command.
    for args in [
        ["--json", "--admin", &url, "status"],
        ["--admin", &url, "status", "--json"],
    ] {
        let run = ctl(&args, Some(TOKEN)).await;
        assert_eq!(run.code, 0, "{}", run.err);
        let v: serde_json::Value = serde_json::from_str(&run.out).expect("JSON");
        assert_eq!(v["regions"][1]["backends"][1]["state"], "down");
    }
    m.shutdown().await;
}

#[tokio::test]
async fn drain_and_undrain_a_region_and_a_backend() {
    let (us1, eu1, eu2) = (
        Backend::start("us-1").await,
        Backend::start("eu-1").await,
        Backend::start("eu-2").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let (m, url) = two_regions(dir.path(), &[&us1], &[&eu1, &eu2]).await;
    let t = Some(TOKEN);

    let run = ctl(&["--admin", &url, "drain", "us"], t).await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(run.out, "region us: drained (health: healthy)\n");
    assert_eq!(run.err, "", "eu still serves: no warning");
    assert!(m.shared.load().control.drained_regions.contains("us"));
    assert_eq!(region_state(&m, "us").await, "drained");

    let eu2_addr = eu2.addr.to_string();
    let run = ctl(&["--admin", &url, "drain", "eu", "--backend", &eu2_addr], t).await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(
        run.out,
        format!("backend {eu2_addr} of region eu: drained (health: up)\n")
    );
    assert!(m.shared.load().regions[1].backends[1].drained);

    let run = ctl(
        &["--admin", &url, "undrain", "eu", "--backend", &eu2_addr],
        t,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(
        run.out,
        format!("backend {eu2_addr} of region eu: undrained, now up\n")
    );
    assert!(!m.shared.load().regions[1].backends[1].drained);

    let run = ctl(&["--admin", &url, "undrain", "us"], t).await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(run.out, "region us: undrained, now healthy\n");
    assert!(m.shared.load().control.drained_regions.is_empty());

    // Unknown names come back as the API's 404 text, exit code 3.
    let run = ctl(&["--admin", &url, "drain", "ap"], t).await;
    assert_eq!(run.code, 3, "{}", run.err);
    assert_eq!(run.err, "meridian: no region named \"ap\" (404)\n");
    let run = ctl(
        &["--admin", &url, "drain", "us", "--backend", "[::1]:80"],
        t,
    )
    .await;
    assert_eq!(run.code, 3, "{}", run.err);
    assert!(
        run.err
            .contains("region \"us\" has no backend \"[::1]:80\""),
        "the IPv6 address arrived intact: {}",
        run.err
    );
    m.shutdown().await;
}

#[tokio::test]
async fn a_conflict_exits_3_with_the_servers_message() {
    let (us1, eu1) = (Backend::start("us-1").await, Backend::start("eu-1").await);
    let dir = tempfile::tempdir().unwrap();
    let (m, url) = two_regions(dir.path(), &[&us1], &[&eu1]).await;
    let run = ctl(&["--admin", &url, "undrain", "us"], Some(TOKEN)).await;
    assert_eq!(run.code, 3);
    assert_eq!(run.out, "");
    assert_eq!(run.err, "meridian: region \"us\" is not drained (409)\n");
    let run = ctl(&["--admin", &url, "incident", "clear"], Some(TOKEN)).await;
    assert_eq!(run.code, 3);
    assert_eq!(run.err, "meridian: no incident is set (409)\n");
    m.shutdown().await;
}

#[tokio::test]
async fn incident_set_and_clear() {
    let (us1, eu1) = (Backend::start("us-1").await, Backend::start("eu-1").await);
    let dir = tempfile::tempdir().unwrap();
    let (m, url) = two_regions(dir.path(), &[&us1], &[&eu1]).await;
    let t = Some(TOKEN);
    let run = ctl(
        &[
            "--admin",
            &url,
            "incident",
            "set",
            "--title",
            "Checkout errors",
            "--message",
            "Payments fail for some users.",
            "--link",
            "https://status.example.com/i/42",
        ],
        t,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(
        run.out,
        "incident set: Checkout errors (https://status.example.com/i/42)\n"
    );
    let incident = m.shared.load().control.incident.clone().unwrap();
    assert_eq!(incident.message, "Payments fail for some users.");

    let run = ctl(&["--admin", &url, "status"], t).await;
    assert!(
        run.out.contains(
            "incident: Checkout errors\n  Payments fail for some users.\n  https://status.example.com/i/42\n"
        ),
        "{}",
        run.out
    );

    // The API checks the input; ctl passes its word on.
    let run = ctl(
        &[
            "--admin",
            &url,
            "incident",
            "set",
            "--title",
            "t",
            "--message",
            "m",
            "--link",
            "ftp://x",
        ],
        t,
    )
    .await;
    assert_eq!(run.code, 3);
    assert!(run.err.contains("invalid link \"ftp://x\""), "{}", run.err);

    let run = ctl(&["--admin", &url, "incident", "clear"], t).await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(run.out, "incident cleared\n");
    assert!(m.shared.load().control.incident.is_none());
    m.shutdown().await;
}

#[tokio::test]
async fn a_missing_or_wrong_token_exits_3_and_names_the_variable() {
    let (us1, eu1) = (Backend::start("us-1").await, Backend::start("eu-1").await);
    let dir = tempfile::tempdir().unwrap();
    let (m, url) = two_regions(dir.path(), &[&us1], &[&eu1]).await;
    let run = ctl(&["--admin", &url, "drain", "us"], None).await;
    assert_eq!(run.code, 3);
    assert!(
        run.err.contains("missing or invalid bearer token")
            && run
                .err
                .contains("no token was sent: set MERIDIAN_ADMIN_TOKEN"),
        "{}",
        run.err
    );
    let run = ctl(&["--admin", &url, "status"], Some("not-the-token")).await;
    assert_eq!(run.code, 3);
    assert!(
        run.err.contains("check the token in MERIDIAN_ADMIN_TOKEN"),
        "{}",
        run.err
    );
    assert!(
        !run.err.contains("not-the-token"),
        "the token is never printed"
    );
    assert!(m.shared.load().control.drained_regions.is_empty());
    m.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_admin_api_exits_1_and_says_what_to_check() {
    // A port that was just free: nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let run = ctl(&["--admin", &url, "status"], Some(TOKEN)).await;
    assert_eq!(run.code, 1);
    assert!(
        run.err
            .starts_with(&format!("meridian: cannot reach the admin API at {url}: "))
            && run.err.contains("(is Meridian running? is --admin right?)"),
        "{}",
        run.err
    );
    let run = ctl(&["--admin", "https://127.0.0.1:9901", "status"], None).await;
    assert_eq!(run.code, 2, "{}", run.err);
    assert!(run.err.contains("expected an http:// URL"), "{}", run.err);
    let run = ctl(&["drain"], None).await;
    assert_eq!(
        run.code, 2,
        "a missing region is a usage error: {}",
        run.err
    );
}

#[tokio::test]
async fn draining_the_last_region_warns_on_stderr() {
    let (us1, eu1) = (Backend::start("us-1").await, Backend::start("eu-1").await);
    let dir = tempfile::tempdir().unwrap();
    let (m, url) = two_regions(dir.path(), &[&us1], &[&eu1]).await;
    let run = ctl(&["--admin", &url, "drain", "eu"], Some(TOKEN)).await;
    assert_eq!((run.code, run.err.as_str()), (0, ""));
    let run = ctl(&["--admin", &url, "drain", "us"], Some(TOKEN)).await;
    assert_eq!(run.code, 0, "the drain is done: {}", run.err);
    assert_eq!(run.out, "region us: drained (health: healthy)\n");
    assert!(
        run.err.starts_with("warning: no region can serve now"),
        "{}",
        run.err
    );
    m.shutdown().await;
}

#[tokio::test]
async fn the_address_and_token_come_from_the_config_file() {
    let (us1, eu1) = (Backend::start("us-1").await, Backend::start("eu-1").await);
    let dir = tempfile::tempdir().unwrap();
    let (m, _) = two_regions(dir.path(), &[&us1], &[&eu1]).await;
    let port = m.admin_addr.unwrap().port();
    // The file Meridian would run with: a listener on every address is
    // reached on loopback, and its token file is read.
    let file = dir.path().join("meridian.toml");
    std::fs::write(
        &file,
        format!(
            "[admin]\nlisten = \"0.0.0.0:{port}\"\ntoken_file = \"{}\"\n[[region]]\nname = \"us\"\nbackends = [\"{}\"]\n",
            dir.path().join("token").display(),
            us1.url()
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let run = ctl(&["-c", file, "drain", "eu"], None).await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert!(m.shared.load().control.drained_regions.contains("eu"));
    let run = ctl(&["undrain", "eu", "--config", file], None).await;
    assert_eq!(run.code, 0, "{}", run.err);

    // MERIDIAN_ADMIN_TOKEN wins over the file's token.
    let run = ctl(&["-c", file, "status"], Some("wrong")).await;
    assert_eq!(run.code, 3, "{}", run.err);

    std::fs::write(
        dir.path().join("bad.toml"),
        "[admin]\nlisten = \"nowhere\"\n",
    )
    .unwrap();
    let bad = dir.path().join("bad.toml");
    let run = ctl(&["-c", bad.to_str().unwrap(), "status"], None).await;
    assert_eq!(run.code, 1);
    assert!(
        run.err.contains("`admin.listen`") && run.err.contains("give --admin URL"),
        "{}",
        run.err
    );
    m.shutdown().await;
}

#[tokio::test]
async fn reload_reports_what_needs_a_restart_and_lists_the_issues_of_a_bad_file() {
    let (us1, eu1) = (Backend::start("us-1").await, Backend::start("eu-1").await);
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, format!("{TOKEN}\n")).unwrap();
    let text = config_text(&[R("us", &[&us1], &["eu"]), R("eu", &[&eu1], &["us"])], "").replace(
        "[admin]\n",
        &format!("[admin]\ntoken_file = \"{}\"\n", token_path.display()),
    );
    // Reload re-reads the file Meridian was started from, so it starts from one.
    let file = dir.path().join("meridian.toml");
    std::fs::write(&file, &text).unwrap();
    let config = meridian::config::Config::load(&file).unwrap();
    let m = meridian::server::start(config).await.unwrap();
    let url = format!("http://{}", m.admin_addr.unwrap());

    // us fails over nowhere any more, and the public listener moves.
    let changed = text
        .replacen("failover = [\"eu\"]", "failover = []", 1)
        .replacen("http = \"127.0.0.1:0\"", "http = \"127.0.0.1:1\"", 1);
    std::fs::write(&file, &changed).unwrap();
    let run = ctl(&["--admin", &url, "reload"], Some(TOKEN)).await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert!(
        run.out.starts_with("configuration reloaded") && run.out.contains("listen.http"),
        "{}",
        run.out
    );
    assert!(m.shared.load().config.regions[0].failover.is_empty());

    std::fs::write(&file, changed.replace("[listen]\n", "[listen]\nhtp = 1\n")).unwrap();
    let run = ctl(&["--admin", &url, "reload"], Some(TOKEN)).await;
    assert_eq!(run.code, 3, "{}", run.err);
    let issue = run
        .err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("an issue on its own line: {}", run.err));
    assert!(
        issue.contains(&file.display().to_string()) && issue.contains("listen.htp"),
        "{}",
        run.err
    );
    assert!(
        m.shared.load().config.regions[0].failover.is_empty(),
        "the configuration in force is kept"
    );
    m.shutdown().await;
}
