//! The template catalogue: what each template says of itself, templates per installation,
//! removal, and what every template gives a sandbox (an unprivileged `user`, sane modes).

use serde_json::{Value, json};

use crate::{caged, error_code, stderr, stdout};

/// The busybox tarball scripts/build-templates makes, with `extra` files added (in place of
/// its own of the same path).
pub(crate) fn busybox_with(extra: &[(&str, &[u8])]) -> Vec<u8> {
    let path = caged_testkit::template_dir().join("busybox.tar");
    let data = std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let mut archive = tar::Archive::new(data.as_slice());
    let mut out = tar::Builder::new(Vec::new());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut header = entry.header().clone();
        let path = entry.path().unwrap().into_owned();
        let replaced = extra.iter().any(|(extra, _)| {
            path.strip_prefix(".").unwrap_or(&path) == std::path::Path::new(extra)
        });
        if !replaced {
            out.append_data(&mut header, path, &mut entry).unwrap();
        }
    }
    for (path, content) in extra {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        out.append_data(&mut header, path, *content).unwrap();
    }
    out.into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_catalogue_says_what_each_template_is() {
    let server = caged_testkit::spawn().await;
    let templates = server.client.templates().await.unwrap();
    for name in ["base", "busybox"] {
        let template = templates
            .iter()
            .find(|template| template.name == name)
            .unwrap_or_else(|| panic!("{name} is listed: {templates:?}"));
        assert!(
            template.description.is_some() && template.built_from.is_some(),
            "{name} says what it is and what it was built from: {template:?}"
        );
        assert!(
            template.recipe.is_some() && template.built_at.is_some() && template.size_bytes > 0,
            "{name} has its recipe, build time and size: {template:?}"
        );
        assert_eq!(
            &server.client.template(name).await.unwrap(),
            template,
            "one template reads as it is listed"
        );
    }
    let base = templates.iter().find(|t| t.name == "base").unwrap();
    for tool in ["git", "curl", "python3", "gcc"] {
        assert!(
            base.tools
                .get(tool)
                .is_some_and(|version| !version.is_empty()),
            "base names the version of {tool}: {:?}",
            base.tools
        );
    }
    // The versions are the template's own: python3 --version in a sandbox agrees.
    let id = server.sandbox(json!({"template": "base"})).await;
    let out = server
        .client
        .run(&id, &["python3", "--version"])
        .await
        .unwrap();
    assert!(
        out.stdout.contains(&base.tools["python3"]),
        "python3 --version ({}) is the listed {}",
        out.stdout.trim(),
        base.tools["python3"]
    );

    let (status, code, message) = error_code(server.client.template("nope").await.unwrap_err());
    assert_eq!((status, code.as_str()), (404, "unknown_template"));
    assert!(
        message.contains("nope") && message.contains("base"),
        "{message}"
    );

    // The CLI shows the same, as a table and as JSON.
    let out = caged(&server, &["template", "ls"]);
    let table = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        table.starts_with("NAME ") && table.contains("TOOLS"),
        "{table}"
    );
    assert!(
        table.contains(&format!(
            "busybox {}",
            templates
                .iter()
                .find(|t| t.name == "busybox")
                .unwrap()
                .tools["busybox"]
        )),
        "{table}"
    );
    let out = caged(&server, &["template", "inspect", "base", "--json"]);
    let inspected: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(inspected["tools"]["git"], base.tools["git"].as_str());
    let out = caged(&server, &["template", "inspect", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("unknown template \"nope\""),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn templates_belong_to_their_installation() {
    let (one, two) = tokio::join!(caged_testkit::spawn(), caged_testkit::spawn());
    let theirs = busybox_with(&[("marker", b"two")]);
    one.client
        .import_template("mine", busybox_with(&[]))
        .await
        .unwrap();
    let before = one.client.template("mine").await.unwrap();
    let (status, code, _) = error_code(two.client.template("mine").await.unwrap_err());
    assert_eq!(
        (status, code.as_str()),
        (404, "unknown_template"),
        "another installation does not see the import"
    );
    // The other installation's import of the same name replaces nothing of the first's.
    two.client.import_template("mine", theirs).await.unwrap();
    assert_eq!(
        one.client.template("mine").await.unwrap().image_id,
        before.image_id
    );
    let in_one = one.sandbox(json!({"template": "mine"})).await;
    let in_two = two.sandbox(json!({"template": "mine"})).await;
    let out = one.client.run(&in_one, &["cat", "/marker"]).await.unwrap();
    assert_ne!(
        out.exit_code,
        Some(0),
        "the first installation's template has no marker"
    );
    let out = two.client.run(&in_two, &["cat", "/marker"]).await.unwrap();
    assert_eq!(out.stdout, "two");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_template_in_use_is_not_removed() {
    let server = caged_testkit::spawn().await;
    server
        .client
        .import_template("doomed", busybox_with(&[]))
        .await
        .unwrap();
    let id = server.sandbox(json!({"template": "doomed"})).await;
    let alice = server.new_account("alice").await;
    let (status, _, _) = error_code(alice.remove_template("doomed").await.unwrap_err());
    assert_eq!(status, 403, "only an admin removes templates");

    let (status, code, message) =
        error_code(server.client.remove_template("doomed").await.unwrap_err());
    assert_eq!((status, code.as_str()), (409, "template_in_use"));
    assert!(
        message.contains(&id),
        "the refusal names the sandbox: {message}"
    );
    server.client.pause(&id).await.unwrap();
    let (status, _, _) = error_code(server.client.remove_template("doomed").await.unwrap_err());
    assert_eq!(status, 409, "a paused sandbox uses its template too");
    assert!(server.client.template("doomed").await.is_ok());

    server.client.destroy(&id).await.unwrap();
    let out = caged(&server, &["template", "rm", "doomed"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let names: Vec<String> = server
        .client
        .templates()
        .await
        .unwrap()
        .into_iter()
        .map(|template| template.name)
        .collect();
    assert!(
        !names.contains(&"doomed".to_string()) && names.contains(&"busybox".to_string()),
        "{names:?}"
    );
    let (status, code, _) = error_code(
        server
            .client
            .create_sandbox(&json!({"template": "doomed"}))
            .await
            .unwrap_err(),
    );
    assert_eq!((status, code.as_str()), (400, "unknown_template"));
    let (status, code, _) = error_code(server.client.remove_template("doomed").await.unwrap_err());
    assert_eq!((status, code.as_str()), (404, "unknown_template"));
    let (status, code, _) = error_code(server.client.remove_template("Bad").await.unwrap_err());
    assert_eq!((status, code.as_str()), (400, "invalid_template"));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_template_has_an_unprivileged_user_and_sane_modes() {
    let server = caged_testkit::spawn().await;
    for template in ["busybox", "base"] {
        let id = server.sandbox(json!({"template": template})).await;
        let out = server
            .client
            .run(
                &id,
                &[
                    "sh",
                    "-c",
                    "stat -c '%a' /; id -u user; id -g user; stat -c '%u:%g %a' /workspace /home/user; grep '^user:' /etc/passwd | cut -d: -f6",
                ],
            )
            .await
            .unwrap();
        assert_eq!(
            out.stdout, "755\n1000\n1000\n1000:1000 755\n1000:1000 755\n/home/user\n",
            "{template}: / is 0755, and `user` (1000:1000) owns /workspace and its home; {}",
            out.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgraded_installation_takes_over_the_engine_wide_templates_of_before() {
    // An earlier version's template: engine-wide, `caged/<name>:latest`.
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let name = format!("legacy-{}", caged_domain::random_hex(4));
    let mut server = caged_testkit::spawn().await;
    let busybox = server.client.template("busybox").await.unwrap();
    let tag = bollard::query_parameters::TagImageOptionsBuilder::default()
        .repo(&format!("caged/{name}"))
        .tag("latest")
        .build();
    docker
        .tag_image(&busybox.image_id, Some(tag))
        .await
        .unwrap();
    let legacy = format!("caged/{name}:latest");
    let outcome = async {
        // A new installation never takes them...
        let fresh = caged_testkit::spawn().await;
        let (status, _, _) = error_code(fresh.client.template(&name).await.unwrap_err());
        assert_eq!(status, 404, "a new installation has no earlier templates");
        // ...one that existed before does, the first time it looks, and leaves the old name.
        server.restart().await;
        let adopted = server.client.template(&name).await.unwrap();
        assert_eq!(adopted.image_id, busybox.image_id);
        let id = server.sandbox(json!({"template": name})).await;
        let out = server.client.run(&id, &["true"]).await.unwrap();
        assert_eq!(out.exit_code, Some(0));
        assert!(
            docker.inspect_image(&legacy).await.is_ok(),
            "the engine-wide name stays, for other installations of before"
        );
    };
    let result = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(outcome)).await;
    let _ = docker
        .remove_image(
            &legacy,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// A folder's contents as a tar.
fn tar_of(dir: &std::path::Path) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.append_dir_all(".", dir).unwrap();
    builder.into_inner().unwrap()
}

/// A build context folder holding `files`.
fn context(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn a_template_is_built_from_a_dockerfile_on_a_template() {
    let server = caged_testkit::spawn().await;
    let dir = context(&[
        (
            "Dockerfile",
            "# a greeter\nFROM busybox\nCOPY hello.txt /opt/hello.txt\nRUN chmod 0644 /opt/hello.txt && touch /opt/built\n",
        ),
        ("hello.txt", "hi from the context\n"),
    ]);
    let out = caged(
        &server,
        &[
            "template",
            "build",
            "greeter",
            &dir.path().display().to_string(),
        ],
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("Step 1/5 : FROM busybox")
            && err.contains("Step 2/5 : COPY hello.txt /opt/hello.txt")
            && err.contains("template greeter built"),
        "the build's steps are shown as they run: {err}"
    );
    let template = server.client.template("greeter").await.unwrap();
    assert_eq!(
        template.description.as_deref(),
        Some("built from a Dockerfile on busybox")
    );
    assert!(
        template.tools.contains_key("busybox"),
        "it has its base's tools: {template:?}"
    );
    let id = server.sandbox(json!({"template": "greeter"})).await;
    let run = server
        .client
        .run(
            &id,
            &["sh", "-c", "cat /opt/hello.txt; id -un; ls /opt/built"],
        )
        .await
        .unwrap();
    assert_eq!(
        run.stdout, "hi from the context\nuser\n/opt/built\n",
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_build_names_its_step_and_leaves_nothing() {
    let server = caged_testkit::spawn().await;
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    // Untagged images that came of a step naming `marker` (other tests build side by side).
    let leftovers = |marker: String| {
        let docker = docker.clone();
        async move {
            let filters = std::collections::HashMap::from([(
                "dangling".to_string(),
                vec!["true".to_string()],
            )]);
            let images = docker
                .list_images(Some(
                    bollard::query_parameters::ListImagesOptionsBuilder::default()
                        .filters(&filters)
                        .build(),
                ))
                .await
                .unwrap();
            let mut found = Vec::new();
            for image in images {
                if let Ok(inspected) = docker.inspect_image(&image.id).await
                    && serde_json::to_string(&inspected).unwrap().contains(&marker)
                {
                    found.push(image.id);
                }
            }
            found
        }
    };
    let good = context(&[("Dockerfile", "FROM busybox\nRUN touch /opt-first\n")]);
    let out = caged(
        &server,
        &[
            "template",
            "build",
            "keeper",
            &good.path().display().to_string(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let before = server.client.template("keeper").await.unwrap();

    let marker = format!("marker-{}", caged_domain::random_hex(4));
    let dockerfile =
        format!("FROM busybox\nCOPY a.txt /opt/{marker}\nRUN echo building && exit 3\n");
    let bad = context(&[("Dockerfile", &dockerfile), ("a.txt", "a")]);
    let out = caged(
        &server,
        &[
            "template",
            "build",
            "keeper",
            &bad.path().display().to_string(),
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("Step 3/5 : RUN echo building && exit 3") && err.contains("\nbuilding\n"),
        "the failing step and its output are shown: {err}"
    );
    assert!(
        err.contains("the build failed at Step 3/5 : RUN echo building && exit 3: The command")
            && err.contains("returned a non-zero code: 3 (build_failed)"),
        "the error names the step: {err}"
    );
    assert_eq!(
        server.client.template("keeper").await.unwrap().image_id,
        before.image_id,
        "a failed build replaces nothing"
    );
    assert_eq!(
        leftovers(marker).await,
        Vec::<String>::new(),
        "a failed build leaves no layers behind"
    );

    // Input refused before any build: a registry's image, no Dockerfile, hostile paths.
    let registry = context(&[("Dockerfile", "FROM ubuntu:22.04\nRUN true\n")]);
    let tar = tar_of(registry.path());
    let (status, code, message) = error_code(
        server
            .client
            .build_template("other", "Dockerfile", tar)
            .await
            .unwrap_err(),
    );
    assert_eq!((status, code.as_str()), (400, "bad_dockerfile"));
    assert!(
        message.contains("line 1: FROM ubuntu:22.04: not a template of this installation")
            && message.contains("busybox"),
        "{message}"
    );
    let (status, code, _) = error_code(
        server
            .client
            .build_template("other", "Containerfile", tar_of(registry.path()))
            .await
            .unwrap_err(),
    );
    assert_eq!((status, code.as_str()), (400, "bad_dockerfile"));
    let mut hostile = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_old();
    header.as_old_mut().name[..9].copy_from_slice(b"../escape");
    header.set_size(1);
    header.set_mode(0o644);
    header.set_cksum();
    hostile.append(&header, &b"x"[..]).unwrap();
    let (status, code, _) = error_code(
        server
            .client
            .build_template("other", "Dockerfile", hostile.into_inner().unwrap())
            .await
            .unwrap_err(),
    );
    assert_eq!((status, code.as_str()), (400, "bad_archive"));
    assert!(server.client.template("other").await.is_err());
}
