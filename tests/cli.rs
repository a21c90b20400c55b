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
