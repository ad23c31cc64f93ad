//! Templates built from a Dockerfile: the build context arrives as an upload and is checked
//! like any (capped, decompressed here, sanitized, spooled whole before the engine sees it);
//! the build then runs on the node with its output streamed back as it comes.

use std::io::{Read, Seek};
use std::path::{Component, Path};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use caged_archive::{ArchiveError, Limits};
use caged_runtime::TemplateInfo;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;

use crate::blocking;
use crate::error::{Error, Result};
use crate::files::{Upload, capped, spool_file, spooled, too_large};
use crate::state::AppState;

/// A Dockerfile is text of a few kilobytes.
const MAX_DOCKERFILE: u64 = 1 << 20;

/// A build under way: its output lines, then its outcome.
pub(crate) struct Build {
    pub progress: UnboundedReceiver<String>,
    pub done: JoinHandle<Result<TemplateInfo>>,
}

/// Starts building template `name` from the Dockerfile at `dockerfile` (a relative path) in
/// the context `body` (a tar, plain or gzip). Everything about the input is checked before the
/// build starts; what the build itself finds comes out of [`Build::done`].
pub(crate) async fn build(
    state: &Arc<AppState>,
    name: &str,
    dockerfile: &str,
    body: Upload,
) -> Result<Build> {
    caged_domain::config::check_template_name("template", name)
        .map_err(|err| Error::invalid("invalid_template", err.to_string()))?;
    let wanted = Path::new(dockerfile);
    if dockerfile.is_empty()
        || !wanted
            .components()
            .all(|component| matches!(component, Component::Normal(_) | Component::CurDir))
    {
        return Err(Error::invalid(
            "bad_dockerfile",
            format!("dockerfile: {dockerfile:?} is not a relative path inside the context"),
        ));
    }
    let wanted = wanted
        .components()
        .filter(|component| matches!(component, Component::Normal(_)))
        .collect::<std::path::PathBuf>();
    let spool = spool_file(state).map_err(|err| Error::Internal(format!("spooling: {err}")))?;
    let (body, over) = capped(body, state.config.max_upload_bytes);
    let limits = Limits::for_disk(state.config.max_upload_bytes as u64 * 4);
    let checked = blocking::consume(body, move |reader| {
        let mut spool = spool;
        let input = caged_archive::decompressed(reader)?;
        let spool_err = |source| ArchiveError::Write {
            path: "(spool)".into(),
            source,
        };
        caged_archive::sanitize(input, &mut spool, limits)?;
        spool.rewind().map_err(spool_err)?;
        let mut text = None;
        for entry in tar::Archive::new(&mut spool)
            .entries()
            .map_err(ArchiveError::Read)?
        {
            let mut entry = entry.map_err(ArchiveError::Read)?;
            let path = entry.path().map_err(ArchiveError::Read)?.into_owned();
            if path == wanted && entry.header().entry_type().is_file() {
                let mut bytes = Vec::new();
                (&mut entry)
                    .take(MAX_DOCKERFILE + 1)
                    .read_to_end(&mut bytes)
                    .map_err(ArchiveError::Read)?;
                text = Some(bytes);
                break;
            }
        }
        spool.rewind().map_err(spool_err)?;
        Ok::<_, ArchiveError>((spool, text))
    })
    .await;
    let (context, text) = match checked {
        Ok(done) => done,
        Err(_) if over.load(Ordering::Relaxed) => return Err(too_large(state)),
        Err(ArchiveError::Write { source, .. }) => {
            return Err(Error::Internal(format!("spooling the context: {source}")));
        }
        Err(err) => {
            return Err(Error::invalid(
                "bad_archive",
                format!("build context rejected: {err}"),
            ));
        }
    };
    let text = match text {
        None => {
            return Err(Error::invalid(
                "bad_dockerfile",
                format!("the build context has no file {dockerfile}"),
            ));
        }
        Some(bytes) if bytes.len() as u64 > MAX_DOCKERFILE => {
            return Err(Error::invalid(
                "bad_dockerfile",
                format!("{dockerfile} is larger than {MAX_DOCKERFILE} bytes"),
            ));
        }
        Some(bytes) => String::from_utf8(bytes).map_err(|_| {
            Error::invalid("bad_dockerfile", format!("{dockerfile} is not UTF-8 text"))
        })?,
    };
    let (tx, progress) = tokio::sync::mpsc::unbounded_channel();
    let node = state.node.clone();
    let name = name.to_string();
    let done = tokio::spawn(async move {
        let template = node
            .build_template(&name, &text, spooled(context), tx)
            .await?;
        tracing::info!(template = %name, bytes = template.size_bytes, "template built");
        Ok(template)
    });
    Ok(Build { progress, done })
}
