//! `caged cp SRC DST`: one side is `ID:/path` in a sandbox, the other a local path.
//! A directory is copied with its contents into DST (created if missing), like `cp -r SRC/. DST`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use caged_client::{Client, ClientError};
use futures_util::TryStreamExt;

use crate::Cli;

#[derive(clap::Args)]
pub struct Args {
    /// Source: a local path or ID:/path.
    src: String,
    /// Destination: a local path or ID:/path.
    dst: String,
}

/// `ID:/path` → (ID, /path).
fn remote(spec: &str) -> Option<(&str, &str)> {
    let (id, path) = spec.split_once(':')?;
    let is_id = id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit());
    is_id.then_some((id, path))
}

pub async fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let client = cli.client();
    match (remote(&args.src), remote(&args.dst)) {
        (None, Some((id, path))) => upload(&client, Path::new(&args.src), id, path).await?,
        (Some((id, path)), None) => download(&client, id, path, Path::new(&args.dst)).await?,
        (Some(_), Some(_)) => {
            bail!("copying between two sandboxes is not supported; copy through a local folder")
        }
        (None, None) => bail!("one of SRC and DST must be ID:/path in a sandbox"),
    }
    Ok(ExitCode::SUCCESS)
}

/// A tar of a directory's contents (entries relative to it; symlinks kept as links).
pub fn tar_directory(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder
        .append_dir_all(".", dir)
        .with_context(|| format!("cannot read {}", dir.display()))?;
    Ok(builder.into_inner()?)
}

async fn upload(client: &Client, local: &Path, id: &str, path: &str) -> anyhow::Result<()> {
    let meta =
        std::fs::metadata(local).with_context(|| format!("cannot read {}", local.display()))?;
    if meta.is_dir() {
        let dir = local.to_path_buf();
        let tar = tokio::task::spawn_blocking(move || tar_directory(&dir)).await??;
        let result = client.write_tar(id, path, tar).await?;
        eprintln!("copied {} entries into {id}:{path}", result.entries());
        return Ok(());
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    let data = tokio::fs::read(local)
        .await
        .with_context(|| format!("cannot read {}", local.display()))?;
    let name = local
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("file");
    let target = if path.ends_with('/') {
        format!("{path}{name}")
    } else {
        path.to_string()
    };
    match client
        .write_file(id, &target, data.clone(), Some(mode))
        .await
    {
        // DST is an existing directory: copy into it, as cp does.
        Err(ClientError::Api { code, .. }) if code == "is_directory" => {
            let target = format!("{}/{name}", target.trim_end_matches('/'));
            client.write_file(id, &target, data, Some(mode)).await?;
        }
        other => {
            other?;
        }
    }
    Ok(())
}

async fn download(client: &Client, id: &str, path: &str, local: &Path) -> anyhow::Result<()> {
    let download = client.read_file(id, path).await?;
    let reader = tokio_util::io::StreamReader::new(
        download.body.bytes_stream().map_err(std::io::Error::other),
    );
    if download.is_dir {
        let dest = local.to_path_buf();
        let bridge = tokio_util::io::SyncIoBridge::new(reader);
        let entries = tokio::task::spawn_blocking(move || {
            caged_archive::extract_into(bridge, &dest, true, caged_archive::Limits::default())
        })
        .await??;
        eprintln!("copied {entries} entries into {}", local.display());
        return Ok(());
    }
    let target: PathBuf = if local.is_dir() {
        let name = Path::new(path)
            .file_name()
            .context("the sandbox path has no file name")?;
        local.join(name)
    } else {
        local.to_path_buf()
    };
    let mut file = tokio::fs::File::create(&target)
        .await
        .with_context(|| format!("cannot create {}", target.display()))?;
    let mut reader = reader;
    tokio::io::copy(&mut reader, &mut file)
        .await
        .with_context(|| format!("writing {}", target.display()))?;
    if let Some(mode) = download.mode {
        use std::os::unix::fs::PermissionsExt;
        tokio::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
            .await
            .ok();
    }
    Ok(())
}
