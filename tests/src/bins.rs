//! Paths of this workspace's compiled binaries.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

/// The compiled `gateway` binary: `$GATEWAY_BIN` if set, otherwise
/// `<target>/<profile>/gateway` next to the running test executable.
pub fn gateway_bin() -> Result<PathBuf> {
    workspace_bin("gateway", "GATEWAY_BIN")
}

/// The compiled `firmware-sim` binary: `$FIRMWARE_SIM_BIN` if set, otherwise
/// `<target>/<profile>/firmware-sim` next to the running test executable.
pub fn firmware_sim_bin() -> Result<PathBuf> {
    workspace_bin("firmware-sim", "FIRMWARE_SIM_BIN")
}

fn workspace_bin(name: &str, env_override: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env_override) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "{env_override}={} does not name an existing file",
                path.display()
            );
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("current_exe")?;
    // <target>/<profile>/deps/<test>-<hash>  ->  <target>/<profile>/<name>
    let mut dir = exe
        .parent()
        .context("test executable has no parent dir")?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "the `{name}` binary is missing at {}: run scripts/test, which builds the binaries \
             first (cargo build --workspace --bins), or set {env_override}",
            path.display()
        );
    }
    Ok(path)
}
