//! `sspm keys`: the Ed25519 key pair of each service (README, "Identity"), as
//! `auth.service_keys_dir` reads them.

use std::path::{Path, PathBuf};

use sspm_platform::ServiceKind;

/// Writes `<service>.key.pem` (PKCS#8, owner-only) and `<service>.pub.pem` for the four
/// services into `dir`; refuses to overwrite an existing file (a pair would no longer match
/// what the other services hold). Returns the files written.
pub fn write_service_keys(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let names: Vec<(ServiceKind, PathBuf, PathBuf)> = ServiceKind::ALL
        .into_iter()
        .map(|k| {
            (
                k,
                dir.join(format!("{}.key.pem", k.name())),
                dir.join(format!("{}.pub.pem", k.name())),
            )
        })
        .collect();
    if let Some(existing) = names.iter().flat_map(|(_, a, b)| [a, b]).find(|p| p.exists()) {
        anyhow::bail!(
            "{} exists: keys are never overwritten (the services hold the old public keys); write into a new directory to rotate",
            existing.display()
        );
    }
    let mut written = Vec::new();
    for (_, private_path, public_path) in names {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        write_private(&private_path, pair.serialize_pem().as_bytes())?;
        std::fs::write(&public_path, pair.public_key_pem())
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", public_path.display()))?;
        written.push(private_path);
        written.push(public_path);
    }
    Ok(written)
}

fn write_private(path: &Path, pem: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    file.write_all(pem)?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_keys_are_what_the_services_load_and_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_service_keys(dir.path()).unwrap();
        assert_eq!(written.len(), 8);
        let keys = sspm_platform::identity::ServiceKeys::from_dir(dir.path()).unwrap();
        for kind in ServiceKind::ALL {
            assert!(keys.public(kind).len() == 1 && keys.private(kind).is_some(), "{kind:?}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("request.key.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "private keys are owner-only: {mode:o}");
        }
        let again = write_service_keys(dir.path()).unwrap_err();
        assert!(again.to_string().contains("never overwritten"), "{again}");
        // A private key that is not its public key's pair is refused at load.
        std::fs::copy(dir.path().join("approval.key.pem"), dir.path().join("request.key.pem")).unwrap();
        let mismatch = sspm_platform::identity::ServiceKeys::from_dir(dir.path()).unwrap_err();
        assert!(
            mismatch.to_string().contains("matches none of its public keys"),
            "{mismatch}"
        );
    }
}
