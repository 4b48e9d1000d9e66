//! The web dashboard of `wpool serve`: its assets over plain HTTP, and the
//! page itself driven in a real Chromium by `tests/browser/dashboard.mjs`.

use std::path::{Path, PathBuf};
use std::process::Command;

use wpool_test_artifacts as programs;

use crate::server::{Server, agent};

const TOKEN: &str = "dashboard-test-token";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// Status, Content-Type and body of a GET, with the token when given.
fn fetch(server: &Server, path: &str, token: Option<&str>) -> (u16, String, String) {
    let mut request = agent().get(format!("{}{path}", server.url));
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let mut response = request.call().expect("request");
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let content_type = header("content-type");
    let body = response.body_mut().read_to_string().unwrap_or_default();
    (status, content_type, body)
}

fn upload(server: &Server, path: &str) -> String {
    let mut response = agent()
        .post(format!("{}/v1/modules", server.url))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Content-Type", "application/wasm")
        .send(&std::fs::read(path).expect("a test program")[..])
        .expect("upload");
    let status = response.status().as_u16();
    let body: serde_json::Value =
        serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    assert!(status == 200 || status == 201, "{status} {body}");
    body["hash"].as_str().unwrap().to_string()
}

/// The page and its assets are static and hold no data: they load without
/// the token (the page asks for it), while the API still needs it.
#[test]
fn the_dashboard_loads_without_a_token_and_the_api_still_needs_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--token", TOKEN, "--workers", "1"]);

    let (status, content_type, body) = fetch(&server, "/", None);
    assert_eq!(status, 200, "{body}");
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(body.contains("/dashboard/app.js"), "{body}");

    let response = agent().get(format!("{}/", server.url)).call().unwrap();
    let headers = response.headers();
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
    assert_eq!(headers["cache-control"], "no-cache");

    for (path, kind) in [
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/style.css", "text/css"),
        ("/dashboard/favicon.svg", "image/svg+xml"),
    ] {
        let (status, content_type, _) = fetch(&server, path, None);
        assert_eq!(status, 200, "{path}");
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
    }

    let (status, _, body) = fetch(&server, "/v1/stats", None);
    assert_eq!(status, 401, "{body}");
    let (status, _, body) = fetch(&server, "/v1/stats", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    // An unknown asset is an ordinary 404, with nothing behind it.
    let (status, _, _) = fetch(&server, "/dashboard/nothing.js", None);
    assert_eq!(status, 404);
}

/// The dashboard in a real browser: a task appears and succeeds, a running
/// one is cancelled and a failed one retried from the page, a wrong token is
/// refused in words, phone width and dark mode; screenshots of each step go
/// to `target/dashboard-screenshots/`.
#[test]
fn the_dashboard_works_in_a_real_browser() {
    let root = repo_root();
    let script = root.join("tests/browser/dashboard.mjs");
    let chromium = std::env::var("WPOOL_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let setup = "run `bash scripts/install-toolchains.sh` (it installs node, Debian's chromium \
                 and the npm packages of tests/browser)";
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is missing: {setup}"
    );
    assert!(
        root.join("tests/browser/node_modules/playwright-core/package.json")
            .exists(),
        "playwright-core is not installed in tests/browser/node_modules: {setup}"
    );
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: {setup}"
    );

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--token", TOKEN, "--workers", "2"]);
    let echo = upload(&server, programs::P1_ECHO);
    let sleep = upload(&server, programs::P1_SLEEP);
    let exit_with = upload(&server, programs::P1_EXIT_WITH);
    let progress = upload(&server, programs::P1_PROGRESS);

    let screenshots = root.join("target/dashboard-screenshots");
    let output = Command::new("node")
        .arg(&script)
        .args(["--url", &server.url, "--token", TOKEN])
        .args([
            "--echo",
            &echo,
            "--sleep",
            &sleep,
            "--exit-with",
            &exit_with,
        ])
        .args(["--progress", &progress])
        .arg("--screenshots")
        .arg(&screenshots)
        .env("WPOOL_CHROMIUM", &chromium)
        .current_dir(&root)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "the browser test failed ({}):\n{stdout}\n{stderr}\nthe server's log:\n{}",
        output.status,
        server.log()
    );
}
