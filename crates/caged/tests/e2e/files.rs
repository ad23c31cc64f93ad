//! Files in and out: single files and directories both ways, paths that try to escape, and
//! archives that try to.

use std::os::unix::fs::PermissionsExt;

use serde_json::json;

use crate::{caged, error_code, stderr};

#[tokio::test(flavor = "multi_thread")]
async fn cp_copies_files_and_directories_both_ways() {
    let server = caged_testkit::spawn().await;
    let id = server.sandbox(json!({ "template": "busybox" })).await;
    let local = tempfile::tempdir().unwrap();
    let project = local.path().join("project");
    std::fs::create_dir_all(project.join("src/deep")).unwrap();
    std::fs::write(project.join("README"), "hello\n").unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(project.join("src/deep/blob.bin"), &big).unwrap();
    std::fs::write(project.join("run.sh"), "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(
        project.join("run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("README", project.join("link")).unwrap();

    let out = caged(
        &server,
        &[
            "cp",
            project.to_str().unwrap(),
            &format!("{id}:/workspace/p"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let check = server.client.run(&id, &["sh", "-c", "cd /workspace/p && ./run.sh && cat link && readlink link && md5sum src/deep/blob.bin"]).await.unwrap();
    assert_eq!(check.exit_code, Some(0), "{}", check.stderr);
    let md5 = md5_file(&project.join("src/deep/blob.bin"));
    assert_eq!(
        check.stdout,
        format!("ran\nhello\nREADME\n{md5}  src/deep/blob.bin\n")
    );

    // And back out, byte for byte, with modes and links.
    let back = local.path().join("back");
    let out = caged(
        &server,
        &["cp", &format!("{id}:/workspace/p"), back.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(back.join("src/deep/blob.bin")).unwrap(), big);
    assert_eq!(
        std::fs::metadata(back.join("run.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    assert_eq!(
        std::fs::read_link(back.join("link")).unwrap().to_str(),
        Some("README")
    );

    // Single files, into a directory and to a new name.
    let out = caged(
        &server,
        &[
            "cp",
            project.join("README").to_str().unwrap(),
            &format!("{id}:/tmp"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = caged(
        &server,
        &[
            "cp",
            &format!("{id}:/tmp/README"),
            local.path().join("copy.txt").to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(local.path().join("copy.txt")).unwrap(),
        "hello\n"
    );

    let out = caged(
        &server,
        &[
            "cp",
            &format!("{id}:/nope"),
            local.path().join("x").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert_eq!(stderr(&out), "caged: no such path in the sandbox: /nope\n");
}

/// md5 of a local file, as the sandbox's `md5sum` prints it.
fn md5_file(path: &std::path::Path) -> String {
    let out = std::process::Command::new("md5sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn paths_resolve_inside_the_sandbox_only() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let id = server.sandbox(json!({ "template": "busybox" })).await;
    // The host has /etc/shadow; the busybox template does not. A link planted in the sandbox
    // must resolve in the sandbox.
    assert!(std::path::Path::new("/etc/shadow").exists());
    client
        .run(&id, &["ln", "-s", "/etc/shadow", "/workspace/evil"])
        .await
        .unwrap();
    client
        .run(
            &id,
            &[
                "ln",
                "-s",
                "../../../../../../etc/shadow",
                "/workspace/evil2",
            ],
        )
        .await
        .unwrap();
    for path in ["/workspace/evil", "/workspace/evil2", "/etc/shadow"] {
        let (status, _, message) = error_code(client.read_file(&id, path).await.err().unwrap());
        assert_eq!(status, 404, "{path}: {message}");
    }
    for (path, reason) in [
        ("/workspace/../../etc/passwd", "`..` is not allowed"),
        (
            "/proc/self/root/etc/shadow",
            "/proc, /sys and /dev are not files of the sandbox",
        ),
        (
            "/proc/1/environ",
            "/proc, /sys and /dev are not files of the sandbox",
        ),
        ("etc/passwd", "must be absolute (start with /)"),
    ] {
        let (status, code, message) = error_code(client.read_file(&id, path).await.err().unwrap());
        assert_eq!((status, code.as_str()), (400, "bad_path"));
        assert!(message.ends_with(reason), "{message}");
        let (status, _, _) = error_code(client.write_file(&id, path, "x", None).await.unwrap_err());
        assert_eq!(status, 400);
    }
    // Writing through a planted link to a directory lands inside the sandbox, never on the host.
    client
        .run(&id, &["ln", "-s", "/", "/workspace/rootlink"])
        .await
        .unwrap();
    let marker = format!("caged-escape-test-{id}");
    client
        .write_file(&id, &format!("/workspace/rootlink/tmp/{marker}"), "x", None)
        .await
        .unwrap();
    assert!(!std::path::Path::new("/tmp").join(&marker).exists());
    let inside = client
        .run(&id, &["cat", &format!("/tmp/{marker}")])
        .await
        .unwrap();
    assert_eq!(inside.stdout, "x");
}

fn tar_with(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, data) in entries {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(*kind);
        if *kind == tar::EntryType::Symlink {
            // A link's data is its target.
            header.as_old_mut().linkname[..data.len()].copy_from_slice(data);
            header.set_mode(0o777);
            header.set_size(0);
            header.set_cksum();
            out.extend_from_slice(header.as_bytes());
            continue;
        }
        header.set_size(data.len() as u64);
        header.set_mode(0o4755);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_archives_are_refused_and_change_nothing() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let id = server.sandbox(json!({ "template": "busybox" })).await;
    for (entries, expected) in [
        (
            vec![
                ("ok", tar::EntryType::Regular, &b"1"[..]),
                ("/etc/evil", tar::EntryType::Regular, &b"x"[..]),
            ],
            "absolute paths are not allowed",
        ),
        (
            vec![
                ("ok", tar::EntryType::Regular, &b"1"[..]),
                ("a/../../../etc/evil", tar::EntryType::Regular, &b"x"[..]),
            ],
            "`..` is not allowed",
        ),
        (
            vec![
                ("ok", tar::EntryType::Regular, &b"1"[..]),
                ("null", tar::EntryType::Char, &b""[..]),
            ],
            "character device entries are not allowed",
        ),
        (
            vec![
                ("ok", tar::EntryType::Regular, &b"1"[..]),
                ("up", tar::EntryType::Symlink, &b"/"[..]),
                ("up/etc/evil", tar::EntryType::Regular, &b"x"[..]),
            ],
            "lies below up, a symlink earlier in the archive",
        ),
    ] {
        let (status, code, message) = error_code(
            client
                .write_tar(&id, "/workspace/up", tar_with(&entries))
                .await
                .unwrap_err(),
        );
        assert_eq!((status, code.as_str()), (400, "bad_archive"));
        assert!(message.contains(expected), "{message}");
    }
    // Nothing of the refused archives was written, not even their harmless first entries.
    let listing = client
        .run(&id, &["sh", "-c", "ls /workspace; ls /etc/evil"])
        .await
        .unwrap();
    assert_eq!(listing.stdout, "");
    assert_ne!(listing.exit_code, Some(0));

    // A gzip-compressed tar is decompressed by Caged, and setuid bits are dropped.
    let gz = gzip(&tar_with(&[(
        "bin/tool",
        tar::EntryType::Regular,
        b"#!/bin/sh\necho tool\n",
    )]));
    let result = client.write_tar(&id, "/workspace/up", gz).await.unwrap();
    assert!(
        matches!(
            result,
            caged_client::wire::FileWritten::Directory { entries: 1, .. }
        ),
        "{result:?}"
    );
    let check = client
        .run(
            &id,
            &[
                "sh",
                "-c",
                "/workspace/up/bin/tool; stat -c %a /workspace/up/bin/tool",
            ],
        )
        .await
        .unwrap();
    assert_eq!(check.stdout, "tool\n755\n");
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut child = std::process::Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(data).unwrap();
    child.wait_with_output().unwrap().stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_over_the_limit_are_refused_whole() {
    let server = caged_testkit::spawn_with(|config| config.max_upload_bytes = 1 << 20).await;
    let client = &server.client;
    let id = server.sandbox(json!({ "template": "busybox" })).await;
    let (status, code, message) = error_code(
        client
            .write_file(&id, "/workspace/big", vec![7u8; 2 << 20], None)
            .await
            .unwrap_err(),
    );
    assert_eq!((status, code.as_str()), (413, "too_large"), "{message}");
    let listing = client.run(&id, &["ls", "/workspace"]).await.unwrap();
    assert_eq!(listing.stdout, "");
    client
        .write_file(&id, "/workspace/small", vec![7u8; 1000], None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compressed_upload_is_bounded_by_the_sandbox_disk() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let id = server
        .sandbox(json!({ "template": "busybox", "resources": { "disk": 1 } }))
        .await;
    // A small file, then one whose header says 3 GiB: a few KB of gzip that would unpack to
    // more than the disk holds. Caged must refuse it from the header, before the engine sees
    // anything, and keep nothing of it.
    let mut tar = tar_with(&[("ok", tar::EntryType::Regular, &b"1"[..])]);
    tar.truncate(tar.len() - 1024);
    let mut header = tar::Header::new_gnu();
    header.set_path("huge").unwrap();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(3 << 30);
    header.set_mode(0o644);
    header.set_cksum();
    tar.extend_from_slice(header.as_bytes());
    tar.extend(std::iter::repeat_n(0u8, 4 << 20));
    let bomb = gzip(&tar);
    assert!(bomb.len() < 64 << 10, "{} bytes", bomb.len());
    let (status, code, message) = error_code(
        client
            .write_tar(&id, "/workspace/up", bomb)
            .await
            .unwrap_err(),
    );
    assert_eq!((status, code.as_str()), (413, "too_large"), "{message}");
    assert!(message.contains("the sandbox's 1 GB disk"), "{message}");
    let listing = client
        .run(&id, &["sh", "-c", "ls -A /workspace"])
        .await
        .unwrap();
    assert_eq!(listing.stdout, "");

    // The same sandbox takes an archive that fits.
    let fits = gzip(&tar_with(&[(
        "a/b",
        tar::EntryType::Regular,
        &[7u8; 4096][..],
    )]));
    client.write_tar(&id, "/workspace/up", fits).await.unwrap();
    let size = client
        .run(&id, &["stat", "-c", "%s", "/workspace/up/a/b"])
        .await
        .unwrap();
    assert_eq!(size.stdout, "4096\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_racing_a_swap_is_whole_or_an_error() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let id = server.sandbox(json!({ "template": "busybox" })).await;
    let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
    client
        .write_file(&id, "/workspace/data", data.clone(), None)
        .await
        .unwrap();
    // The sandbox swaps /workspace/f between a copy of the data and a link to a directory,
    // as fast as it can, while the host reads it.
    let swap = "cd /workspace && mkdir d && cp data f && \
                while true; do ln -s d f.l; mv -f f.l f; cp data f.new; rm f; mv f.new f; done";
    client
        .exec(
            &id,
            &json!({ "cmd": ["sh", "-c", format!("({swap}) >/dev/null 2>&1 &")] }),
        )
        .await
        .unwrap();
    let (mut whole, mut refused) = (0, 0);
    // At least 40 reads, and on until one lands between swaps (a busy host makes that rarer).
    for round in 0..400 {
        if round >= 40 && whole > 0 {
            break;
        }
        let Ok(download) = client.read_file(&id, "/workspace/f").await else {
            refused += 1;
            continue;
        };
        if download.is_dir {
            continue; // read through the link: a directory, answered as one
        }
        match download.body.bytes().await {
            Ok(bytes) => {
                assert!(
                    bytes[..] == data[..],
                    "a 200 with {} of the file's {} bytes",
                    bytes.len(),
                    data.len()
                );
                whole += 1;
            }
            Err(_) => refused += 1,
        }
    }
    assert!(whole > 0, "no read came through whole ({refused} refused)");
}
