//! Templates from a Dockerfile, built by the engine's own build API on this installation's
//! templates: each `FROM` names a template, no registry is asked, and the build has no network.

use std::collections::HashMap;

use bollard::query_parameters::{BuildImageOptionsBuilder, RemoveImageOptions};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use super::{DockerRuntime, LABEL_TEMPLATE, engine_error};
use crate::{ByteStream, Result, RuntimeError, TemplateInfo, TemplateManifest};

/// Where the (rewritten) Dockerfile goes in the build context: a name no context can have
/// (sanitized contexts hold relative paths only, and this one is written first).
const DOCKERFILE: &str = ".caged-build/Dockerfile";
/// The label a built template's own manifest is kept in (its files hold its base's).
pub(super) const LABEL_MANIFEST: &str = "dev.caged.manifest";
/// A Dockerfile is text of a few kilobytes.
const MAX_DOCKERFILE: usize = 1 << 20;

impl DockerRuntime {
    pub(super) async fn build(
        &self,
        name: &str,
        dockerfile: &str,
        context: ByteStream,
        progress: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<TemplateInfo> {
        let (rewritten, bases) = self.rewrite(dockerfile).await?;
        let manifest = TemplateManifest {
            description: Some(format!("built from a Dockerfile on {}", bases.join(", "))),
            built_from: Some(format!(
                "Dockerfile ({} instructions) FROM {}",
                instructions(dockerfile),
                bases.join(", ")
            )),
            built_at: Some(now_seconds()),
            ..TemplateManifest::default()
        };
        let labels = HashMap::from([
            (LABEL_TEMPLATE.to_string(), name.to_string()),
            (
                LABEL_MANIFEST.to_string(),
                serde_json::to_string(&manifest).unwrap_or_default(),
            ),
        ]);
        let tag = self.template_image(name);
        let options = BuildImageOptionsBuilder::default()
            .dockerfile(DOCKERFILE)
            .t(&tag)
            .labels(&labels)
            .rm(true)
            .forcerm(true)
            // Every step runs without a network: what a template needs comes in its context.
            .networkmode("none")
            .build();
        // The context: the Dockerfile first, then the sanitized tar (whose end marker ends both).
        let head = Bytes::from(dockerfile_entry(&rewritten)?);
        let body = futures_util::stream::once(async move { Ok(head) })
            .chain(context)
            .map_err(|err| std::io::Error::other(err.to_string()));
        let docker = self.docker()?;
        let mut build = docker.build_image(options, None, Some(bollard::body_try_stream(body)));
        let mut step = String::from("the start");
        let mut made: Vec<String> = Vec::new();
        let mut failure = None;
        while let Some(item) = build.next().await {
            match item {
                Ok(info) => {
                    if let Some(text) = info.stream {
                        for line in text.lines().filter(|line| !line.trim().is_empty()) {
                            // Said as the user wrote it: templates by name, not by this
                            // installation's image of them, and the platform's labels unsaid.
                            let mut line = line.to_string();
                            for base in &bases {
                                line = line.replace(&self.template_image(base), base);
                            }
                            if line.contains("dev.caged.") {
                                continue;
                            }
                            if line.starts_with("Step ") {
                                step = line.trim().to_string();
                            }
                            // The classic builder names each layer it makes: ` ---> 1a2b3c4d5e6f`.
                            if let Some(id) = line.trim().strip_prefix("---> ")
                                && id.len() == 12
                                && id.bytes().all(|b| b.is_ascii_hexdigit())
                            {
                                made.push(id.to_string());
                            }
                            let _ = progress.send(line);
                        }
                    }
                    if let Some(detail) = info.error_detail {
                        failure = Some(detail.message.unwrap_or_default());
                    }
                }
                Err(err) => {
                    failure = Some(match engine_error(err) {
                        RuntimeError::Engine { message, .. } => message,
                        other => other.to_string(),
                    });
                    break;
                }
            }
        }
        if let Some(reason) = failure {
            self.remove_dangling(&made).await;
            return Err(RuntimeError::BuildFailed {
                step,
                reason: reason.trim().to_string(),
            });
        }
        let template = self
            .one_template(name)
            .await?
            .ok_or_else(|| RuntimeError::Engine {
                status: 500,
                message: format!("template {name} missing after its build"),
            })?;
        // Steps' layers that the template does not keep (the builder's cache) take only disk.
        self.remove_dangling(&made).await;
        Ok(template)
    }

    /// The Dockerfile with each `FROM` of a template replaced by this installation's image of
    /// it, and those templates' names; refused when a `FROM` names anything else.
    async fn rewrite(&self, dockerfile: &str) -> Result<(String, Vec<String>)> {
        if dockerfile.len() > MAX_DOCKERFILE {
            return Err(bad(format!("larger than {MAX_DOCKERFILE} bytes")));
        }
        let mut stages: Vec<String> = Vec::new();
        let mut bases: Vec<String> = Vec::new();
        let mut out = String::with_capacity(dockerfile.len() + 64);
        for (index, line) in dockerfile.lines().enumerate() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let is_from = words
                .first()
                .is_some_and(|word| word.eq_ignore_ascii_case("FROM"));
            if !is_from {
                out.push_str(line);
                out.push('\n');
                continue;
            }
            let number = index + 1;
            let args: Vec<&str> = words[1..]
                .iter()
                .copied()
                .filter(|word| !word.starts_with("--"))
                .collect();
            let (image, alias) = match args.as_slice() {
                [image] => (*image, None),
                [image, keyword, alias] if keyword.eq_ignore_ascii_case("AS") => {
                    (*image, Some(alias.to_string()))
                }
                _ => {
                    return Err(bad(format!(
                        "line {number}: {line:?} is not `FROM <template> [AS <name>]`"
                    )));
                }
            };
            let replaced = if stages.iter().any(|stage| stage == image) {
                image.to_string()
            } else {
                let known = caged_domain::config::check_template_name("FROM", image).is_ok()
                    && self.one_template(image).await?.is_some();
                if !known {
                    let names: Vec<String> = self
                        .list_templates()
                        .await?
                        .into_iter()
                        .map(|template| template.name)
                        .collect();
                    return Err(bad(format!(
                        "line {number}: FROM {image}: not a template of this installation \
                         (templates: {}); builds start from a template, never a registry",
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(", ")
                        }
                    )));
                }
                if !bases.iter().any(|base| base == image) {
                    bases.push(image.to_string());
                }
                self.template_image(image)
            };
            out.push_str(&format!("FROM {replaced}"));
            if let Some(alias) = &alias {
                out.push_str(&format!(" AS {alias}"));
                stages.push(alias.clone());
            }
            out.push('\n');
        }
        if bases.is_empty() {
            return Err(bad("it has no FROM line naming a template".into()));
        }
        Ok((out, bases))
    }

    /// Removes the images in `ids` that no tag names (layers of a failed build, or a
    /// successful one's cache); an image a tag, a container or a child still needs stays.
    async fn remove_dangling(&self, ids: &[String]) {
        let Ok(docker) = self.docker() else { return };
        for id in ids.iter().rev() {
            let Ok(image) = docker.inspect_image(id).await else {
                continue;
            };
            if !image.repo_tags.unwrap_or_default().is_empty() {
                continue;
            }
            let _ = docker
                .remove_image(id, None::<RemoveImageOptions>, None)
                .await;
        }
    }
}

fn bad(reason: String) -> RuntimeError {
    RuntimeError::BadDockerfile { reason }
}

/// How many instructions a Dockerfile has (lines that are neither blank nor comments).
fn instructions(dockerfile: &str) -> usize {
    dockerfile
        .lines()
        .filter(|line| {
            let line = line.trim();
            !line.is_empty() && !line.starts_with('#')
        })
        .count()
}

fn now_seconds() -> i64 {
    caged_domain::time::now_ms() / 1000
}

/// One tar entry (no end marker) holding the Dockerfile at [`DOCKERFILE`].
fn dockerfile_entry(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut header = tar::Header::new_gnu();
    header.set_size(text.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header
        .set_path(DOCKERFILE)
        .map_err(|err| bad(err.to_string()))?;
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(text.as_bytes());
    out.resize(out.len().div_ceil(512) * 512, 0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dockerfile_entry_is_one_whole_record_before_the_context() {
        let entry = dockerfile_entry("FROM x\n").unwrap();
        assert_eq!(entry.len() % 512, 0);
        let mut context = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o644);
        context
            .append_data(&mut header, "a.txt", &b"hi"[..])
            .unwrap();
        let mut whole = entry;
        whole.extend(context.into_inner().unwrap());
        let mut archive = tar::Archive::new(&whole[..]);
        let paths: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|entry| entry.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(paths, [DOCKERFILE, "a.txt"]);
    }

    #[test]
    fn instructions_are_counted_without_blanks_and_comments() {
        assert_eq!(instructions("# hi\nFROM base\n\nRUN true\n"), 2);
    }
}
