//! Where a local Docker engine keeps each container's root filesystem, so the host can watch
//! the files a sandbox writes without going through the sandbox: the driver's [`HostView`].
//!
//! With the `btrfs` storage driver (what `scripts/engine-up` sets up), a container's root is the
//! subvolume `<engine root>/btrfs/subvolumes/<mount id>`, and the engine records the container's
//! mount id in `<engine root>/image/btrfs/layerdb/mounts/<container id>/mount-id`.

use std::path::{Path, PathBuf};

use crate::HostView;

/// Whether sandboxes' root filesystems under `root` can be watched with this driver.
/// The driver makes its subvolumes folder with its first image: on a new engine it is made here
/// (as the driver would, 0700), so observation starts before any template is imported.
pub(crate) fn watchable(driver: &str, root: &Path) -> bool {
    if driver != "btrfs" || !root.join("btrfs").is_dir() {
        return false;
    }
    let subvolumes = subvolumes(root);
    if !subvolumes.is_dir() {
        use std::os::unix::fs::DirBuilderExt;
        let _ = std::fs::DirBuilder::new().mode(0o700).create(&subvolumes);
    }
    subvolumes.is_dir()
}

/// The directory that holds every sandbox root filesystem.
fn subvolumes(root: &Path) -> PathBuf {
    root.join("btrfs/subvolumes")
}

fn is_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The mount id (subvolume name) of a container's root filesystem.
fn mount_of(root: &Path, container_id: &str) -> Option<String> {
    if !is_id(container_id) {
        return None;
    }
    let path = root.join(format!(
        "image/btrfs/layerdb/mounts/{container_id}/mount-id"
    ));
    let mount = std::fs::read_to_string(path).ok()?;
    let mount = mount.trim();
    is_id(mount).then(|| mount.to_string())
}

/// The container whose root filesystem is the subvolume `mount_id` (a scan of the engine's
/// records; callers cache the answer).
fn container_of_mount(root: &Path, mount_id: &str) -> Option<String> {
    let entries = std::fs::read_dir(root.join("image/btrfs/layerdb/mounts")).ok()?;
    entries.flatten().find_map(|entry| {
        let container = entry.file_name().to_str()?.to_string();
        (mount_of(root, &container).as_deref() == Some(mount_id)).then_some(container)
    })
}

/// The btrfs storage driver's layout under an engine root.
#[derive(Debug)]
pub(crate) struct Btrfs {
    engine_root: PathBuf,
    subvolumes: PathBuf,
}

impl Btrfs {
    pub(crate) fn new(engine_root: PathBuf) -> Btrfs {
        Btrfs {
            subvolumes: subvolumes(&engine_root),
            engine_root,
        }
    }
}

impl HostView for Btrfs {
    fn roots(&self) -> &Path {
        &self.subvolumes
    }

    fn locate(&self, dir: &Path) -> Option<(String, PathBuf)> {
        let rest = dir.strip_prefix(&self.subvolumes).ok()?;
        let mut parts = rest.components();
        let mount = parts.next()?.as_os_str().to_str()?.to_string();
        // The engine's init layer of a container, written while it is made.
        if mount.ends_with("-init") {
            return None;
        }
        Some((mount, parts.collect()))
    }

    fn handle_of(&self, root: &str) -> Option<String> {
        container_of_mount(&self.engine_root, root)
    }

    fn root_of(&self, handle: &str) -> Option<(String, PathBuf)> {
        let mount = mount_of(&self.engine_root, handle)?;
        let path = self.subvolumes.join(&mount);
        Some((mount, path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_placed_in_their_root_and_init_layers_are_not_roots() {
        let view = Btrfs::new(PathBuf::from("/var/lib/docker"));
        let mount = "a".repeat(64);
        let dir = PathBuf::from(format!("/var/lib/docker/btrfs/subvolumes/{mount}/etc/ssh"));
        assert_eq!(
            view.locate(&dir),
            Some((mount.clone(), PathBuf::from("etc/ssh")))
        );
        let init = PathBuf::from(format!("/var/lib/docker/btrfs/subvolumes/{mount}-init/etc"));
        assert_eq!(view.locate(&init), None);
        assert_eq!(view.locate(Path::new("/var/lib/other/etc")), None);
        assert_eq!(view.roots(), Path::new("/var/lib/docker/btrfs/subvolumes"));
    }
}
