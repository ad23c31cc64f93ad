//! Templates as the engine holds them: images tagged `caged/<installation>/<name>:latest`, so
//! one installation's import never replaces another's on a shared engine. Images of earlier
//! versions (`caged/<name>:latest`, one namespace for the whole engine) are copied into an
//! installation that upgraded ([`DockerRuntime::adopting_legacy_templates`]).

use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, DownloadFromContainerOptionsBuilder,
    ListImagesOptionsBuilder, RemoveImageOptionsBuilder, TagImageOptionsBuilder,
};
use futures_util::{StreamExt, TryStreamExt};
use std::collections::HashMap;

use super::{DockerRuntime, LABEL_INSTALLATION, LABEL_TEMPLATE, engine_error};
use crate::{ByteStream, Result, RuntimeError, TEMPLATE_MANIFEST, TemplateInfo, TemplateManifest};

const REPO_PREFIX: &str = "caged/";
/// A manifest is a few hundred bytes; anything past this is not one.
const MANIFEST_LIMIT: u64 = 64 * 1024;

impl DockerRuntime {
    pub(super) fn template_repo(&self, name: &str) -> String {
        format!("{REPO_PREFIX}{}/{name}", self.installation_id)
    }

    /// The image a sandbox of template `name` starts from.
    pub(super) fn template_image(&self, name: &str) -> String {
        format!("{}:latest", self.template_repo(name))
    }

    pub(super) async fn list_templates(&self) -> Result<Vec<TemplateInfo>> {
        self.adopt_legacy_once().await;
        let docker = self.docker()?;
        let own_prefix = self.template_repo("");
        let mut own: HashMap<String, bollard::models::ImageSummary> = HashMap::new();
        for image in self.template_images(&docker).await? {
            for tag in &image.repo_tags {
                if let Some(name) = tag
                    .strip_suffix(":latest")
                    .and_then(|repo| repo.strip_prefix(&own_prefix))
                {
                    own.insert(name.to_string(), image.clone());
                }
            }
        }
        let mut templates = Vec::with_capacity(own.len());
        for (name, image) in own {
            let described = self.described(&image.id).await.unwrap_or_else(|err| {
                tracing::warn!(template = %name, %err, "could not read a template's manifest and accounts");
                Described::default()
            });
            templates.push(TemplateInfo {
                manifest: described.manifest,
                accounts: described.accounts,
                name,
                image_id: image.id.clone(),
                size_bytes: image.size,
                created_at: image.created,
            });
        }
        templates.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(templates)
    }

    /// One template, by name: one engine call (and, the first time an image is met, a read of
    /// its manifest and accounts), cheap enough for every create.
    pub(super) async fn one_template(&self, name: &str) -> Result<Option<TemplateInfo>> {
        self.adopt_legacy_once().await;
        let image = match self
            .docker()?
            .inspect_image(&self.template_image(name))
            .await
        {
            Ok(image) => image,
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(None),
            Err(err) => return Err(engine_error(err)),
        };
        let Some(id) = image.id else {
            return Ok(None);
        };
        let described = self.described(&id).await?;
        Ok(Some(TemplateInfo {
            name: name.to_string(),
            image_id: id,
            size_bytes: image.size.unwrap_or_default(),
            created_at: image.created.as_deref().map_or(0, engine_seconds),
            manifest: described.manifest,
            accounts: described.accounts,
        }))
    }

    /// Every image that is a template, of any installation.
    async fn template_images(
        &self,
        docker: &bollard::Docker,
    ) -> Result<Vec<bollard::models::ImageSummary>> {
        let filters = HashMap::from([("label".to_string(), vec![LABEL_TEMPLATE.to_string()])]);
        docker
            .list_images(Some(
                ListImagesOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(engine_error)
    }

    /// See [`DockerRuntime::adopting_legacy_templates`]: tags `caged/<name>:latest` as this
    /// installation's `<name>` where it has none of its own. Tried until the engine answers.
    async fn adopt_legacy_once(&self) {
        use std::sync::atomic::Ordering;
        if !self.adopt_legacy.load(Ordering::Relaxed) {
            return;
        }
        let Ok(docker) = self.docker() else { return };
        let Ok(images) = self.template_images(&docker).await else {
            return;
        };
        let own_prefix = self.template_repo("");
        let tags: Vec<&String> = images.iter().flat_map(|image| &image.repo_tags).collect();
        for tag in &tags {
            let Some(name) = tag
                .strip_suffix(":latest")
                .and_then(|repo| repo.strip_prefix(REPO_PREFIX))
                .filter(|name| !name.contains('/'))
            else {
                continue;
            };
            if tags
                .iter()
                .any(|tag| **tag == format!("{own_prefix}{name}:latest"))
            {
                continue;
            }
            let options = TagImageOptionsBuilder::default()
                .repo(&self.template_repo(name))
                .tag("latest")
                .build();
            match docker.tag_image(tag, Some(options)).await {
                Ok(()) => {
                    tracing::info!(template = %name, "took over an earlier version's engine-wide template")
                }
                Err(err) => {
                    tracing::warn!(template = %name, %err, "could not take over an earlier version's template");
                    return;
                }
            }
        }
        self.adopt_legacy.store(false, Ordering::Relaxed);
    }

    /// What the template says of itself, read once per image (an image id names its content).
    /// A read that fails is not remembered: the next asks again.
    async fn described(&self, image_id: &str) -> Result<Described> {
        if let Some(known) = self.described.lock().get(image_id) {
            return Ok(known.clone());
        }
        // The reconciler may take the throwaway container for litter mid-read: once more.
        let described = match self.read_described(image_id).await {
            Ok(described) => described,
            Err(_) => self.read_described(image_id).await?,
        };
        self.described
            .lock()
            .insert(image_id.to_string(), described.clone());
        Ok(described)
    }

    /// Reads [`TEMPLATE_MANIFEST`] and `/etc/passwd` from a container made (never started)
    /// from the image.
    async fn read_described(&self, image_id: &str) -> Result<Described> {
        let docker = self.docker()?;
        let name = format!(
            "caged-{}-template-read-{}",
            self.installation_id,
            caged_domain::random_hex(3)
        );
        let body = ContainerCreateBody {
            image: Some(image_id.to_string()),
            cmd: Some(vec!["/bin/true".into()]),
            // Litter for the reconciler if this process dies before removing it.
            labels: Some(HashMap::from([(
                LABEL_INSTALLATION.to_string(),
                self.installation_id.clone(),
            )])),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                body,
            )
            .await
            .map_err(engine_error)?;
        let read = async {
            let mut manifest: Option<TemplateManifest> =
                read_small_file(&docker, &name, TEMPLATE_MANIFEST)
                    .await?
                    .and_then(|json| serde_json::from_slice(&json).ok());
            // A template built from a Dockerfile says what it is in a label; its files hold its
            // base's manifest, whose tools it has too.
            let labelled = docker
                .inspect_image(image_id)
                .await
                .map_err(engine_error)?
                .config
                .and_then(|config| config.labels)
                .and_then(|labels| labels.get(super::build::LABEL_MANIFEST).cloned())
                .and_then(|json| serde_json::from_str::<TemplateManifest>(&json).ok());
            if let Some(mut own) = labelled {
                if own.tools.is_empty() {
                    own.tools = manifest.map(|base| base.tools).unwrap_or_default();
                }
                manifest = Some(own);
            }
            let accounts = read_small_file(&docker, &name, "/etc/passwd")
                .await?
                .map(|text| crate::parse_passwd(&String::from_utf8_lossy(&text)))
                .unwrap_or_default();
            Ok(Described { manifest, accounts })
        }
        .await;
        let _ = self.remove(&name).await;
        read
    }

    pub(super) async fn import(&self, name: &str, rootfs_tar: ByteStream) -> Result<TemplateInfo> {
        let docker = self.docker()?;
        // The image the name stands for now, to drop once the new one has it.
        let previous = docker
            .inspect_image(&self.template_image(name))
            .await
            .ok()
            .and_then(|image| image.id);
        let options = CreateImageOptionsBuilder::default()
            .from_src("-")
            .repo(&self.template_repo(name))
            .tag("latest")
            .changes(vec![
                format!("LABEL {LABEL_TEMPLATE}={name}"),
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            ])
            .build();
        let body = bollard::body_try_stream(
            rootfs_tar.map_err(|err| std::io::Error::other(err.to_string())),
        );
        let mut progress = docker.create_image(Some(options), Some(body), None);
        while let Some(step) = progress.next().await {
            step.map_err(engine_error)?;
        }
        let template = self
            .one_template(name)
            .await?
            .ok_or_else(|| RuntimeError::Engine {
                status: 500,
                message: format!("template {name} missing after import"),
            })?;
        // The replaced image, if nothing else names or uses it, would only take disk.
        if let Some(previous) = previous
            && previous != template.image_id
        {
            let options = RemoveImageOptionsBuilder::default().noprune(false).build();
            if let Err(err) = docker.remove_image(&previous, Some(options), None).await {
                tracing::debug!(image = %previous, %err, "the replaced template's image is kept");
            }
        }
        Ok(template)
    }

    pub(super) async fn remove_named_template(&self, name: &str) -> Result<()> {
        let docker = self.docker()?;
        let image = self.template_image(name);
        // Untags; the image itself goes with its last name, unless a container still uses it.
        match docker
            .remove_image(
                &image,
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(RuntimeError::TemplateMissing {
                template: name.to_string(),
                known: self.template_names().await?,
            }),
            Err(err) => Err(engine_error(err)),
        }
    }
}

/// The engine's RFC 3339 time (`2026-12-04T19:04:41.123456789Z`) in Unix seconds; 0 when it
/// is not one.
fn engine_seconds(at: &str) -> i64 {
    let Some(seconds) = at.get(..19) else {
        return 0;
    };
    caged_domain::time::ms_from_rfc3339(&format!("{seconds}.000Z")).map_or(0, |ms| ms / 1000)
}

/// What a template says of itself.
#[derive(Clone, Debug, Default)]
pub(super) struct Described {
    manifest: Option<TemplateManifest>,
    accounts: Vec<crate::Account>,
}

/// A regular file of the container of at most [`MANIFEST_LIMIT`] bytes; `None` if there is
/// none, or it is something else.
async fn read_small_file(
    docker: &bollard::Docker,
    container: &str,
    path: &str,
) -> Result<Option<Vec<u8>>> {
    let options = DownloadFromContainerOptionsBuilder::default()
        .path(path)
        .build();
    let mut stream = docker.download_from_container(container, Some(options));
    let mut tar = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => tar.extend_from_slice(&chunk),
            // The file is missing; a container that is missing is an error (see `described`).
            Err(DockerError::DockerResponseServerError {
                status_code: 404,
                message,
            }) if !message.contains("No such container") => return Ok(None),
            Err(err) => return Err(engine_error(err)),
        }
        if tar.len() as u64 > MANIFEST_LIMIT + 4096 {
            return Ok(None);
        }
    }
    Ok(crate::file_in_tar(&tar, MANIFEST_LIMIT))
}

/// A manifest as [`crate::file_in_tar`] finds it.
#[cfg(test)]
fn parse_manifest(tar: &[u8]) -> Option<TemplateManifest> {
    serde_json::from_slice(&crate::file_in_tar(tar, MANIFEST_LIMIT)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(path: &str, data: &[u8], kind: tar::EntryType) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, path, data).unwrap();
        builder.into_inner().unwrap()
    }

    #[test]
    fn a_manifest_is_one_file_of_json_and_nothing_else() {
        let json = br#"{"description":"d","tools":{"node":"20.19.2"},"built_at":5,"extra":1}"#;
        let manifest = parse_manifest(&tar_of("template.json", json, tar::EntryType::Regular))
            .expect("a manifest");
        assert_eq!(manifest.description.as_deref(), Some("d"));
        assert_eq!(
            manifest.tools.get("node").map(String::as_str),
            Some("20.19.2")
        );
        assert_eq!(manifest.built_at, Some(5));
        assert_eq!(manifest.recipe, None);
        assert_eq!(
            parse_manifest(&tar_of(
                "template.json",
                b"not json",
                tar::EntryType::Regular
            )),
            None
        );
        assert_eq!(
            parse_manifest(&tar_of("template.json", b"", tar::EntryType::Directory)),
            None
        );
        assert_eq!(parse_manifest(b"garbage"), None);
    }

    #[test]
    fn engine_times_are_read_to_the_second() {
        assert_eq!(engine_seconds("1970-01-01T00:01:40.123456789Z"), 100);
        assert_eq!(engine_seconds("1970-01-01T00:01:40Z"), 100);
        assert_eq!(engine_seconds("yesterday"), 0);
    }

    #[test]
    fn passwd_lines_that_do_not_parse_are_skipped() {
        let accounts = crate::parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\nbroken\nuser:x:1000:1000::/home/user:/bin/sh\nodd:x:-1:0::/:/bin/sh\n",
        );
        let names: Vec<(&str, u32, u32, &str)> = accounts
            .iter()
            .map(|a| (a.name.as_str(), a.uid, a.gid, a.home.as_str()))
            .collect();
        assert_eq!(
            names,
            [("root", 0, 0, "/root"), ("user", 1000, 1000, "/home/user")]
        );
    }
}
