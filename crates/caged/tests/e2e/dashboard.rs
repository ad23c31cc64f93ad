//! The dashboard in a real headless Chromium (Debian's `chromium`, driven through `chromedriver`)
//! against a real server and engine: sign in, create a sandbox, watch an exec's event arrive
//! live (and an agent session's penalty with its evidence), protect a preview, take, download,
//! fork, restore and delete a snapshot, pause, resume, destroy, see the list with its gauges and
//! the usage plot, on a laptop's and a phone's screen; another account sees none of it.
//! Screenshots of the main pages land in `target/artifacts/dashboard/`.
//!
//! The session cookie's guards (CSRF header, origin, sign-out) are checked over plain HTTP.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use caged_testkit::TestServer;
use caged_testkit::http::{request, request_with_body, send};
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use serde_json::{Value, json};

/// Headless Chromium under chromedriver, closed (and its driver killed) on drop.
struct Chromium {
    driver: Child,
    browser: Option<Browser>,
    downloads: tempfile::TempDir,
    _profile: tempfile::TempDir,
}

impl Chromium {
    async fn start() -> Chromium {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "chromedriver (apt-get install chromium chromium-driver; .ci/run installs them)",
            );
        let downloads = tempfile::tempdir().unwrap();
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                // As root, without the machine's network: no sandbox, no background traffic.
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
                "prefs": {
                    "download.default_directory": downloads.path(),
                    "download.prompt_for_download": false,
                },
            }
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let started = Instant::now();
        let browser = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(browser) => break browser,
                Err(err) if started.elapsed() < Duration::from_secs(20) => {
                    let _ = err;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => panic!("chromium did not start under chromedriver: {err}"),
            }
        };
        Chromium {
            driver,
            browser: Some(browser),
            downloads,
            _profile: profile,
        }
    }

    fn page(&self) -> &Browser {
        self.browser.as_ref().expect("open")
    }

    async fn close(mut self) {
        if let Some(browser) = self.browser.take() {
            let _ = browser.close().await;
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/artifacts/dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(page: &Browser, name: &str) {
    page.execute("window.scrollTo(0, 0)", vec![]).await.unwrap();
    let png = page.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(artifacts().join(format!("{name}.png")), png).unwrap();
}

/// The text of the first element matching `css`, if there is one.
async fn text(page: &Browser, css: &str) -> Option<String> {
    let found = page
        .execute(
            "const el = document.querySelector(arguments[0]); return el ? el.textContent : null;",
            vec![json!(css)],
        )
        .await
        .expect("script runs");
    found.as_str().map(str::to_string)
}

/// Waits until the element `css` exists and its text contains `needle`; returns the text.
async fn wait_text(page: &Browser, css: &str, needle: &str) -> String {
    let started = Instant::now();
    loop {
        if let Some(found) = text(page, css).await
            && found.contains(needle)
        {
            return found;
        }
        if started.elapsed() > Duration::from_secs(45) {
            let url = page.current_url().await.map(|u| u.to_string());
            screenshot(page, "failure").await;
            panic!(
                "{css} never said {needle:?} (now: {:?}) on {url:?}",
                text(page, css).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_path(page: &Browser, prefix: &str) -> String {
    let started = Instant::now();
    loop {
        let url = page.current_url().await.expect("url");
        if url.path().starts_with(prefix) {
            return url.path().to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never reached {prefix}: at {url}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn fill(page: &Browser, css: &str, value: &str) {
    let input = page.find(Locator::Css(css)).await.expect(css);
    input.clear().await.expect("clear");
    input.send_keys(value).await.expect("type");
}

async fn click(page: &Browser, css: &str) {
    // Parts of the page are drawn again as events arrive: an element found just before may be
    // replaced before the click lands, so find it again.
    let started = Instant::now();
    loop {
        let found = page
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("{css}: {err}"));
        match found.click().await {
            Ok(()) => return,
            Err(err) if started.elapsed() < Duration::from_secs(10) => {
                let _ = err;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("click {css}: {err}"),
        }
    }
}

async fn select(page: &Browser, css: &str, value: &str) {
    page.find(Locator::Css(css))
        .await
        .expect(css)
        .select_by_value(value)
        .await
        .unwrap_or_else(|err| panic!("select {value:?} in {css}: {err}"));
}

async fn sign_in(page: &Browser, url: &str, key: &str) {
    page.goto(&format!("{url}/")).await.unwrap();
    wait_path(page, "/login").await;
    fill(page, "#api_key", key).await;
    click(page, "button[type=submit]").await;
    wait_text(page, "main h1", "Sandboxes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_runs_a_sandbox_from_the_dashboard() {
    let server = caged_testkit::spawn().await;
    let url = &server.url;
    // Another account, with a sandbox of its own.
    let other = server.new_account("neighbour").await;
    let theirs = other
        .create_sandbox(&json!({"template": "busybox", "name": "theirs"}))
        .await
        .unwrap()
        .id;

    let chromium = Chromium::start().await;
    let page = chromium.page();

    // Signing in: a wrong key is refused on the page, the right one opens the list.
    page.goto(&format!("{url}/sandboxes/{theirs}"))
        .await
        .unwrap();
    assert_eq!(wait_path(page, "/login").await, "/login");
    screenshot(page, "sign-in").await;
    fill(page, "#api_key", "caged_000000000000_nope").await;
    click(page, "button[type=submit]").await;
    wait_text(page, "#login-error", "not valid").await;
    sign_in(page, url, &server.admin_key).await;

    // Creating: a config error is shown at its field, as .caged.yaml would name it.
    page.goto(&format!("{url}/new")).await.unwrap();
    wait_text(page, "main h1", "New sandbox").await;
    wait_text(page, "#template", "busybox").await;
    // The catalogue shows what each template is, and the chosen one's tools.
    wait_text(page, "#template", "BusyBox's applets").await;
    select(page, "#template", "busybox").await;
    let help = wait_text(page, "#template-help", "busybox ").await;
    assert!(
        help.ends_with(" MB"),
        "the template's tools and size: {help}"
    );
    assert!(
        !page
            .find(Locator::Css("#allowed_hosts"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap(),
        "allowed hosts are asked for only in allowlist mode"
    );
    fill(page, "#name", "dash-web").await;
    click(page, "input[name=network_mode][value=allowlist]").await;
    fill(page, "#allowed_hosts", "example.test").await;
    fill(page, "#cpu", "100").await;
    fill(page, "#budget", "5").await;
    click(page, "#create").await;
    let error = wait_text(page, "#cpu-error", "resources.cpu").await;
    assert!(error.contains("between 0.1 and 64"), "{error}");
    assert_eq!(
        page.find(Locator::Css("#cpu"))
            .await
            .unwrap()
            .attr("aria-invalid")
            .await
            .unwrap()
            .as_deref(),
        Some("true")
    );
    screenshot(page, "new-sandbox-error").await;
    fill(page, "#cpu", "1").await;
    click(page, "#create").await;
    let path = wait_path(page, "/sandboxes/").await;
    let id = path.trim_start_matches("/sandboxes/").to_string();
    wait_text(page, "main h1 .badge", "running").await;
    let sandbox = server.client.sandbox(&id).await.unwrap();
    assert_eq!(sandbox.state, "running");
    assert_eq!(sandbox.name.as_deref(), Some("dash-web"));
    assert_eq!(sandbox.budget_usd, Some(5.0));
    assert_eq!(sandbox.network_mode, "allowlist");
    assert_eq!(sandbox.allowed_hosts, ["example.test"]);

    // Settings of a live sandbox: its budget and its allowlist.
    fill(page, "#budget-usd", "7").await;
    click(page, "#budget-form button[value=set]").await;
    wait_text(page, "#toast", "Budget set").await;
    assert_eq!(
        server.client.sandbox(&id).await.unwrap().budget_usd,
        Some(7.0)
    );
    fill(page, "#allowlist", "example.test\npypi.org").await;
    click(page, "#allowlist-form button").await;
    wait_text(page, "#toast", "Allowlist saved").await;
    let network = server.client.network(&id).await.unwrap();
    assert_eq!(
        network.allowed_hosts,
        ["example.test", "pypi.org"],
        "{network:?}"
    );
    wait_text(page, "#caged-yaml", "template: \"busybox\"").await;

    // An exec's event appears without a reload.
    let ran = server
        .client
        .run(
            &id,
            &["sh", "-c", "echo dashboard-was-here > /tmp/mark && echo ok"],
        )
        .await
        .unwrap();
    assert_eq!(ran.exit_code, Some(0));
    wait_text(page, "#live", "live").await;
    wait_text(page, "#events li[data-kind=exec]", "dashboard-was-here").await;
    select(page, "#event-kind", "exec").await;
    let shown = page
        .execute(
            "return [...document.querySelectorAll('#events li')].filter(li => !li.hidden).map(li => li.dataset.kind)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(shown, json!(["exec"]), "only the kind asked for");
    select(page, "#event-kind", "").await;

    // An agent session that reads /etc/passwd: its trust score and the evidence behind the
    // penalty, on the page without a reload.
    let cli = server.cli_env();
    let agent_id = id.clone();
    let agent = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_caged"))
            .envs(cli)
            .args([
                "agent",
                &agent_id,
                "--type",
                "test-agent",
                "--",
                "sh",
                "-c",
                "cat /etc/passwd > /dev/null",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(agent.status.success(), "{agent:?}");
    let session = wait_text(page, "#sessions tbody tr[data-id]", "80 good").await;
    assert!(session.contains("cat /etc/passwd"), "{session}");
    click(page, "#sessions button[data-session]").await;
    let penalty = wait_text(page, "#sessions .penalties", "sensitive_file").await;
    assert!(
        penalty.contains("−20") && penalty.contains("/etc/passwd"),
        "{penalty}"
    );

    // A preview shows up as its server starts; protecting it takes effect at the proxy.
    let started = server
        .client
        .run(
            &id,
            &[
                "sh",
                "-c",
                "mkdir -p /workspace/www && echo hi > /workspace/www/index.html && httpd -p 8080 -h /workspace/www",
            ],
        )
        .await
        .unwrap();
    assert_eq!(started.exit_code, Some(0), "{started:?}");
    let preview_url = wait_text(page, "#previews li[data-port='8080'] a", "8080").await;
    assert!(
        preview_url.contains(&format!("cage-{id}-8080.")),
        "{preview_url}"
    );
    fill(page, "#protect-port", "8080").await;
    fill(page, "#protect-password", "s3cret-dash").await;
    click(page, "#protect-form button").await;
    wait_text(page, "#previews li[data-port='8080']", "password").await;
    let previews = server.client.previews(&id).await.unwrap();
    assert!(
        previews.iter().any(|p| p.port == 8080 && p.protected),
        "{previews:?}"
    );
    let host = format!(
        "cage-{id}-8080.{}",
        caged_server::PreviewConfig::default().domain
    );
    let anonymous = send(server.preview_addr, request("GET", &host, "/", &[])).await;
    assert_eq!(
        anonymous.status, 401,
        "a protected preview asks for its password"
    );

    // A snapshot, taken from the page, then downloaded as a .tar.gz holding the file.
    fill(page, "#snapshot-name", "from-dashboard").await;
    click(page, "#snapshot-form button").await;
    wait_text(page, "#snapshots tbody", "from-dashboard").await;
    let snapshots = server.client.snapshots(&id).await.unwrap();
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    let snapshot_id = snapshots[0].id.clone();
    screenshot(page, "sandbox").await;
    click(
        page,
        &format!("#snapshots tr[data-id='{snapshot_id}'] a.button"),
    )
    .await;
    let archive = wait_for_download(chromium.downloads.path()).await;
    assert!(
        tar_gz_has(&archive, "tmp/mark", "dashboard-was-here"),
        "the download holds /tmp/mark"
    );

    // Fork: a new sandbox from the snapshot, opened in the page.
    click(
        page,
        &format!("#snapshots tr[data-id='{snapshot_id}'] button[data-action=fork]"),
    )
    .await;
    let started = Instant::now();
    let fork = loop {
        let path = wait_path(page, "/sandboxes/").await;
        let fork = path.trim_start_matches("/sandboxes/").to_string();
        if fork != id {
            break fork;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no fork opened"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    wait_text(page, "main h1 .badge", "running").await;
    let copied = server
        .client
        .read_file_bytes(&fork, "/tmp/mark")
        .await
        .unwrap();
    assert_eq!(&copied[..], b"dashboard-was-here\n");

    // Destroy asks first; cancelling keeps it, confirming destroys it.
    click(page, "#destroy").await;
    click(page, "dialog.confirm button[value=cancel]").await;
    assert_eq!(server.client.sandbox(&fork).await.unwrap().state, "running");
    click(page, "#destroy").await;
    click(page, "#confirm-button").await;
    wait_text(page, "main h1 .badge", "destroyed").await;
    assert_eq!(
        server.client.sandbox(&fork).await.unwrap().state,
        "destroyed"
    );

    // The list: this account's sandboxes with state, cost against budget and trust; the
    // destroyed fork only when asked for; never the neighbour's.
    page.goto(&format!("{url}/")).await.unwrap();
    let row = wait_text(page, &format!("#sandboxes tr[data-id='{id}']"), "dash-web").await;
    assert!(row.contains("running") && row.contains("busybox"), "{row}");
    assert!(
        row.contains("of $7.000000"),
        "a cost against its budget: {row}"
    );
    assert!(row.contains("80 good"), "its worst session's trust: {row}");
    assert!(row.contains(":8080"), "its preview link: {row}");
    let level = page
        .execute(
            "return document.querySelector(`#sandboxes tr[data-id='${arguments[0]}'] .gauge`).dataset.level",
            vec![json!(id)],
        )
        .await
        .unwrap();
    assert_eq!(level, "ok");
    assert!(text(page, &format!("tr[data-id='{fork}']")).await.is_none());
    assert!(
        text(page, &format!("tr[data-id='{theirs}']"))
            .await
            .is_none()
    );
    screenshot(page, "sandboxes").await;
    select(page, "#filter-state", "all").await;
    wait_text(
        page,
        &format!("#sandboxes tr[data-id='{fork}']"),
        "destroyed",
    )
    .await;
    assert!(
        text(page, &format!("tr[data-id='{theirs}']"))
            .await
            .is_none()
    );

    // Usage over time: 30 days plotted, today with both sandboxes and their spend.
    page.goto(&format!("{url}/usage")).await.unwrap();
    wait_text(page, "main h1", "Usage").await;
    let days = page
        .execute(
            "return document.querySelectorAll('#usage-chart g.day').length",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(days, 30);
    let usage = server.client.account_usage(1).await.unwrap();
    let today = usage.days[0].date.clone();
    assert_eq!(usage.days[0].sandboxes_running, 2, "{usage:?}");
    assert!(usage.days[0].compute_micros > 0);
    let row = text(page, &format!("#usage-table tr[data-date='{today}']"))
        .await
        .unwrap();
    assert!(row.contains(&today), "{row}");
    screenshot(page, "usage").await;
    let cli = tokio::task::block_in_place(|| crate::caged(&server, &["usage", "--days", "3"]));
    let table = String::from_utf8_lossy(&cli.stdout).to_string();
    assert!(cli.status.success(), "{cli:?}");
    assert_eq!(
        table.lines().filter(|line| line.starts_with("20")).count(),
        3,
        "{table}"
    );
    assert!(
        table.contains(&today) && table.contains("total $"),
        "{table}"
    );
    for bad in ["0", "367", "x"] {
        let (status, body) = server
            .client
            .raw(
                reqwest::Method::GET,
                &format!("/v1/account/usage?days={bad}"),
                None,
            )
            .await
            .unwrap();
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("days:")
        );
    }

    // The budget gauge turns amber at 80% and red at 95% (the page's own code and styles).
    let levels = page
        .execute(
            "return [10, 79.99, 80, 94.99, 95, 100].map(percent => {
                const cost = {total_micros: percent * 10000, budget_micros: 1000000, budget_percent: percent};
                const gauge = costGauge(cost).querySelector('.gauge');
                document.body.append(gauge);
                const colour = getComputedStyle(gauge.firstChild).backgroundColor;
                gauge.remove();
                return `${gauge.dataset.level} ${colour}`;
            })",
            vec![],
        )
        .await
        .unwrap();
    let green = "ok rgb(46, 139, 87)";
    let amber = "warning rgb(224, 160, 0)";
    let red = "critical rgb(211, 47, 47)";
    assert_eq!(levels, json!([green, green, amber, amber, red, red]));

    // Pause and resume from the page; restore and delete its snapshot (each asks first).
    page.goto(&format!("{url}/sandboxes/{id}")).await.unwrap();
    click(page, "#pause").await;
    wait_text(page, "main h1 .badge", "paused").await;
    assert_eq!(server.client.sandbox(&id).await.unwrap().state, "paused");
    click(page, "#resume").await;
    wait_text(page, "main h1 .badge", "running").await;
    let changed = server
        .client
        .run(&id, &["sh", "-c", "echo changed > /tmp/mark"])
        .await
        .unwrap();
    assert_eq!(changed.exit_code, Some(0));
    click(
        page,
        &format!("#snapshots tr[data-id='{snapshot_id}'] button[data-action=restore]"),
    )
    .await;
    click(page, "#confirm-button").await;
    wait_text(page, "#toast", "Restored").await;
    let restored = server
        .client
        .read_file_bytes(&id, "/tmp/mark")
        .await
        .unwrap();
    assert_eq!(&restored[..], b"dashboard-was-here\n");
    click(
        page,
        &format!("#snapshots tr[data-id='{snapshot_id}'] button[data-action=delete]"),
    )
    .await;
    click(page, "#confirm-button").await;
    wait_text(page, "#snapshots", "No snapshots").await;
    assert!(server.client.snapshots(&id).await.unwrap().is_empty());

    // A phone's screen: the list is cards, nothing wider than the screen.
    page.set_window_size(390, 844).await.unwrap();
    page.goto(&format!("{url}/")).await.unwrap();
    wait_text(page, &format!("#sandboxes tr[data-id='{id}']"), "dash-web").await;
    assert_eq!(page_overflow(page).await, 0, "the list fits the phone");
    screenshot(page, "sandboxes-phone").await;
    page.goto(&format!("{url}/sandboxes/{id}")).await.unwrap();
    wait_text(page, "main h1 .badge", "running").await;
    wait_text(page, "#sessions", "cat /etc/passwd").await;
    assert_eq!(
        page_overflow(page).await,
        0,
        "the sandbox page fits the phone"
    );
    screenshot(page, "sandbox-phone").await;
    page.goto(&format!("{url}/new")).await.unwrap();
    wait_text(page, "main h1", "New sandbox").await;
    assert_eq!(page_overflow(page).await, 0, "the form fits the phone");
    screenshot(page, "new-sandbox-phone").await;
    page.set_window_size(1280, 900).await.unwrap();

    // The neighbour, signed in, sees only their own.
    click(page, "header form.account button").await;
    wait_path(page, "/login").await;
    let neighbour_key = other.api_key().unwrap().to_string();
    sign_in(page, url, &neighbour_key).await;
    wait_text(
        page,
        &format!("#sandboxes tr[data-id='{theirs}']"),
        "theirs",
    )
    .await;
    assert!(text(page, &format!("tr[data-id='{id}']")).await.is_none());
    page.goto(&format!("{url}/sandboxes/{id}")).await.unwrap();
    wait_text(page, "main h1", "not found").await;
    page.goto(&format!("{url}/?state=all")).await.unwrap();
    wait_text(page, "#sandboxes", "theirs").await;
    assert!(text(page, &format!("tr[data-id='{fork}']")).await.is_none());

    chromium.close().await;
}

async fn wait_for_download(dir: &Path) -> PathBuf {
    let started = Instant::now();
    loop {
        let done: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "gz"))
            .collect();
        if let Some(path) = done.first() {
            return path.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no download in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn tar_gz_has(path: &Path, name: &str, content: &str) -> bool {
    let file = std::fs::File::open(path).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            == name
        {
            let mut body = String::new();
            entry.read_to_string(&mut body).unwrap();
            return body.contains(content);
        }
    }
    false
}

/// A browser session opened over plain HTTP: its cookie, and the page's CSRF token.
async fn open_session(server: &TestServer) -> (String, String) {
    let body = format!("api_key={}&next=%2Fusage%3Fdays%3D7", server.admin_key);
    let reply = post_form(
        server.addr,
        &server.addr.to_string(),
        "/login",
        &[("origin", &format!("http://{}", server.addr))],
        body.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 303, "{reply:?}");
    assert_eq!(reply.header("location"), Some("/usage?days=7"));
    let cookie = reply.header("set-cookie").expect("a session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(
        !cookie.to_ascii_lowercase().contains("domain="),
        "host-only: {cookie}"
    );
    let cookie = cookie.split(';').next().unwrap().to_string();
    let page = send(
        server.addr,
        request("GET", &server.addr.to_string(), "/", &[("cookie", &cookie)]),
    )
    .await;
    assert_eq!(page.status, 200);
    let html = String::from_utf8_lossy(&page.body).to_string();
    let csrf = html
        .split("name=\"caged-csrf\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page carries its CSRF token")
        .to_string();
    (cookie, csrf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cookie_only_works_from_the_dashboard() {
    let server = caged_testkit::spawn().await;
    let host = server.addr.to_string();
    let origin = format!("http://{host}");
    let (cookie, csrf) = open_session(&server).await;
    let call = |method: &'static str, path: &'static str, headers: Vec<(&'static str, String)>| {
        let host = host.clone();
        let addr = server.addr;
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            send(
                addr,
                request_with_body(method, &host, path, &headers, bytes_of(b"{}")),
            )
            .await
        }
    };

    // Reading works with the cookie alone.
    let list = call("GET", "/v1/sandboxes", vec![("cookie", cookie.clone())]).await;
    assert_eq!(list.status, 200, "{list:?}");
    // A change needs the page's CSRF token.
    let body = json!({"template": "busybox"}).to_string();
    let no_token = send(
        server.addr,
        request_with_body(
            "POST",
            &host,
            "/v1/sandboxes",
            &[("cookie", &cookie)],
            bytes_of(body.as_bytes()),
        ),
    )
    .await;
    assert_eq!(no_token.status, 403, "{no_token:?}");
    assert!(String::from_utf8_lossy(&no_token.body).contains("x-caged-csrf"));
    let wrong = call(
        "PUT",
        "/v1/account/webhook",
        vec![("cookie", cookie.clone()), ("x-caged-csrf", "0".repeat(32))],
    )
    .await;
    assert_eq!(wrong.status, 403);
    // Another origin (a preview's page, say) is refused even with the token.
    let foreign = call(
        "GET",
        "/v1/sandboxes",
        vec![
            ("cookie", cookie.clone()),
            (
                "origin",
                format!(
                    "http://cage-0a1b2c3d-80.{}",
                    caged_server::PreviewConfig::default().domain
                ),
            ),
        ],
    )
    .await;
    assert_eq!(foreign.status, 403, "{foreign:?}");
    let created = send(
        server.addr,
        request_with_body(
            "POST",
            &host,
            "/v1/sandboxes",
            &[
                ("cookie", &cookie),
                ("x-caged-csrf", &csrf),
                ("origin", &origin),
            ],
            bytes_of(body.as_bytes()),
        ),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(server.client.list_sandboxes(false).await.unwrap().len(), 1);

    // Pages are served with a policy that loads nothing from elsewhere.
    let page = call("GET", "/", vec![("cookie", cookie.clone())]).await;
    let policy = page.header("content-security-policy").unwrap();
    assert!(policy.contains("default-src 'none'") && policy.contains("frame-ancestors 'none'"));
    let script = call("GET", "/assets/app.js", vec![]).await;
    assert_eq!(script.status, 200);
    // (The SVG namespace is a name, not an address anything is loaded from.)
    let script = script.text().replace("http://www.w3.org/2000/svg", "");
    assert!(
        !script.contains("http://") && !script.contains("https://"),
        "no remote assets"
    );

    // A sign-in posted from another site is refused; so is a sign-out without the token.
    let forged = post_form(
        server.addr,
        &host,
        "/login",
        &[("origin", "http://evil.test")],
        format!("api_key={}", server.admin_key).as_bytes(),
    )
    .await;
    assert_eq!(forged.status, 403);
    assert!(forged.header("set-cookie").is_none());
    let forged_out = post_form(
        server.addr,
        &host,
        "/logout",
        &[("cookie", &cookie)],
        b"csrf=wrong",
    )
    .await;
    assert_eq!(forged_out.status, 403);
    assert_eq!(
        call("GET", "/v1/sandboxes", vec![("cookie", cookie.clone())])
            .await
            .status,
        200
    );
    // Signing out ends the session on the server, not just in the browser.
    let out = post_form(
        server.addr,
        &host,
        "/logout",
        &[("cookie", &cookie), ("origin", &origin)],
        format!("csrf={csrf}").as_bytes(),
    )
    .await;
    assert_eq!(out.status, 303);
    let after = call("GET", "/v1/sandboxes", vec![("cookie", cookie.clone())]).await;
    assert_eq!(after.status, 401);
    let page = call("GET", "/", vec![("cookie", cookie)]).await;
    assert_eq!(page.status, 303, "back to the sign-in page");
    // Signed out, an address with a query comes back whole after signing in.
    let page = call("GET", "/usage?days=7", vec![]).await;
    assert_eq!(
        page.header("location"),
        Some("/login?next=%2Fusage%3Fdays%3D7")
    );
}

fn bytes_of(body: &[u8]) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(body)
}

/// A form posted the way a browser posts one.
async fn post_form(
    addr: std::net::SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> caged_testkit::http::Reply {
    let mut all = vec![("content-type", "application/x-www-form-urlencoded")];
    all.extend_from_slice(headers);
    send(
        addr,
        request_with_body("POST", host, path, &all, bytes_of(body)),
    )
    .await
}

/// How many pixels the page is wider than the window (0 when it fits).
async fn page_overflow(page: &Browser) -> i64 {
    page.execute(
        "return Math.max(0, document.documentElement.scrollWidth - document.documentElement.clientWidth)",
        vec![],
    )
    .await
    .unwrap()
    .as_i64()
    .unwrap()
}
