//! Where a local Docker engine keeps each container's root filesystem, so the host can watch
//! the files a sandbox writes without going through the sandbox.
//!
//! With the `btrfs` storage driver (what `scripts/engine-up` sets up), a container's root is the
//! subvolume `<engine root>/btrfs/subvolumes/<mount id>`, and the engine records the container's
//! mount id in `<engine root>/image/btrfs/layerdb/mounts/<container id>/mount-id`.

use std::path::{Path, PathBuf};

/// Whether sandboxes' root filesystems under `root` can be watched with this driver.
pub fn watchable(driver: &str, root: &Path) -> bool {
    driver == "btrfs" && root.join("btrfs/subvolumes").is_dir()
}

/// The directory that holds every sandbox root filesystem.
pub fn subvolumes(root: &Path) -> PathBuf {
    root.join("btrfs/subvolumes")
}

fn is_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The mount id (subvolume name) of a container's root filesystem.
pub fn mount_of(root: &Path, container_id: &str) -> Option<String> {
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
pub fn container_of_mount(root: &Path, mount_id: &str) -> Option<String> {
    let entries = std::fs::read_dir(root.join("image/btrfs/layerdb/mounts")).ok()?;
    entries.flatten().find_map(|entry| {
        let container = entry.file_name().to_str()?.to_string();
        (mount_of(root, &container).as_deref() == Some(mount_id)).then_some(container)
    })
}
