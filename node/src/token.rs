//! The admin token: written on a node's first start to `<data-dir>/admin.token`, mode 0600.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tracing::{info, warn};

pub const TOKEN_FILE: &str = "admin.token";
/// Random bytes in a token (written as hex).
const TOKEN_BYTES: usize = 32;

pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(TOKEN_FILE)
}

/// Reads the node's admin token, creating it on first start.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<String> {
    let path = token_path(data_dir);
    match read(&path) {
        Ok(token) => {
            let mode = fs::metadata(&path)?.permissions().mode();
            if mode & 0o077 != 0 {
                warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "admin token is readable by others; chmod 600 it");
            }
            return Ok(token);
        }
        Err(e) if path.exists() => return Err(e),
        Err(_) => {}
    }
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for the admin token: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    // Written beside, then renamed: a crash leaves the old state (no token), never an empty one.
    let tmp = data_dir.join(format!("{TOKEN_FILE}.tmp"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    file.write_all(token.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    fs::rename(&tmp, &path).with_context(|| format!("write {}", path.display()))?;
    fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("fsync {}", data_dir.display()))?;
    info!(path = %path.display(), "wrote a new admin token");
    Ok(token)
}

/// Reads a token file, as the CLI does.
pub fn read(path: &Path) -> anyhow::Result<String> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let token = text.trim().to_string();
    if token.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        assert_eq!(first.len(), 64);
        let mode = fs::metadata(token_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create(dir.path()).unwrap(), first);
    }
}
