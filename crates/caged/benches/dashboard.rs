//! Dashboard benchmark: what the sandboxes page costs the server. The list it polls every 5 s
//! (`GET /v1/sandboxes`, with each sandbox's cost, worst trust score and preview URLs, through
//! the session cookie) against the raw baseline of listing the same sandboxes' containers with
//! the Docker API, in the same run; and a page load (the shell, then its script) against a bare
//! `GET /v1/system` on the same server.
//!
//! `cargo bench -p caged --bench dashboard [-- SANDBOXES [REQUESTS]]`; needs the engine and
//! templates.

use std::collections::HashMap;
use std::time::Instant;

use bollard::Docker;
use bollard::query_parameters::ListContainersOptionsBuilder;
use caged_testkit::stats::{ms, percentile};
use serde_json::json;

#[tokio::main]
async fn main() {
    let mut numbers = std::env::args().filter_map(|arg| arg.parse::<usize>().ok());
    let sandboxes = numbers.next().unwrap_or(30);
    let requests = numbers.next().unwrap_or(300);
    let server = caged_testkit::spawn().await;
    let docker = Docker::connect_with_local_defaults()
        .expect("docker")
        .negotiate_version()
        .await
        .expect("engine");

    let mut ids = Vec::new();
    for i in 0..sandboxes {
        let id = server
            .client
            .create_sandbox(
                &json!({ "template": "busybox", "name": format!("bench-{i}"), "budget": 5 }),
            )
            .await
            .expect("create")
            .id;
        ids.push(id);
    }
    // Some history to read: a port listening in every third sandbox.
    for id in ids.iter().step_by(3) {
        let started = server
            .client
            .run(id, &["sh", "-c", "mkdir -p /www && httpd -p 8080 -h /www"])
            .await
            .expect("httpd");
        assert_eq!(started.exit_code, Some(0));
    }

    // A browser's session: the cookie the sign-in page sets.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed_in = http
        .post(format!("{}/login", server.url))
        .header("origin", &server.url)
        .form(&[("api_key", server.admin_key.as_str()), ("next", "/")])
        .send()
        .await
        .expect("sign in");
    let cookie = signed_in
        .headers()
        .get("set-cookie")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .expect("a session cookie")
        .to_string();

    let label = format!("dev.caged.installation={}", server.installation_id);
    let filters = HashMap::from([("label".to_string(), vec![label])]);
    let (mut list, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..requests {
        let started = Instant::now();
        let body = http
            .get(format!("{}/v1/sandboxes", server.url))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("list")
            .bytes()
            .await
            .expect("list body");
        list.push(started.elapsed());
        assert!(body.len() > sandboxes * 100);

        let started = Instant::now();
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let containers = docker
            .list_containers(Some(options))
            .await
            .expect("raw list");
        raw.push(started.elapsed());
        assert_eq!(containers.len(), sandboxes);
    }

    let (mut page, mut system) = (Vec::new(), Vec::new());
    for _ in 0..requests {
        let started = Instant::now();
        let shell = http
            .get(format!("{}/", server.url))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("page")
            .text()
            .await
            .expect("page body");
        let script = shell
            .split("src=\"")
            .find(|part| part.starts_with("/assets/app.js"))
            .and_then(|part| part.split('"').next())
            .expect("the page names its script")
            .to_string();
        http.get(format!("{}{script}", server.url))
            .send()
            .await
            .expect("script")
            .bytes()
            .await
            .expect("script body");
        page.push(started.elapsed());

        let started = Instant::now();
        http.get(format!("{}/v1/system", server.url))
            .bearer_auth(&server.admin_key)
            .send()
            .await
            .expect("system")
            .bytes()
            .await
            .expect("system body");
        system.push(started.elapsed());
    }

    for id in &ids {
        let _ = server.client.destroy(id).await;
    }

    println!("\nDashboard, {sandboxes} sandboxes, {requests} requests each; ms");
    println!(
        "{:<40} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "what (vs baseline)", "p50", "base p50", "p99", "base p99", "ratio"
    );
    for (name, mut ours, mut base) in [
        ("sandboxes list (vs Docker's list)", list, raw),
        ("page load: shell + script (vs /v1/system)", page, system),
    ] {
        let (p50, p99) = (percentile(&mut ours, 0.5), percentile(&mut ours, 0.99));
        let (base50, base99) = (percentile(&mut base, 0.5), percentile(&mut base, 0.99));
        println!(
            "{name:<40} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>7.2}x",
            ms(p50),
            ms(base50),
            ms(p99),
            ms(base99),
            ms(p50) / ms(base50)
        );
    }
}
