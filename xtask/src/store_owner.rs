//! A system user that owns a fixture store and runs `store-gc` as it would run in production:
//! unprivileged, the store's owner, asking a tracker started as root. The same kind of user
//! runs the tracker itself after its attach (`run --user`). Deleted in `Drop`.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::fixture::Fixture;
use crate::run;

/// A system user that owns the store and runs `store-gc`; deleted in `Drop`.
pub(crate) struct StoreOwner {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl StoreOwner {
    /// A new system user named `prefix` + our pid.
    pub(crate) fn create(prefix: &str) -> anyhow::Result<Self> {
        let name = format!("{prefix}{}", std::process::id() % 100_000);
        run(Command::new("useradd").args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            &name,
        ]))?;
        let id = |flag: &str| -> anyhow::Result<u32> {
            let out = Command::new("id").arg(flag).arg(&name).output()?;
            Ok(String::from_utf8(out.stdout)?.trim().parse()?)
        };
        // Owned from here on, so a failure below still deletes the user.
        let mut user = Self {
            uid: 0,
            gid: 0,
            name: name.clone(),
        };
        user.uid = id("-u")?;
        user.gid = id("-g")?;
        Ok(user)
    }

    /// Gives the whole fixture (store, state, homes) to this user.
    pub(crate) fn own(&self, fixture: &Fixture) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(fixture.root(), fs::Permissions::from_mode(0o755))?;
        run(Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", self.uid, self.gid))
            .arg(fixture.root()))
    }

    /// `store-gc ARGS` as this user, aimed at `fixture` and `tracker`.
    pub(crate) fn store_gc(
        &self,
        binary: &Path,
        fixture: &Fixture,
        tracker: &Path,
        args: &[&str],
    ) -> Command {
        let mut command = fixture.nix_command("setpriv");
        command
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--clear-groups")
            .arg("--")
            .arg(binary)
            .arg("collect")
            .arg("--tracker-socket")
            .arg(tracker)
            // This sandbox hides its pid 1 from root: the answer is "incomplete" only there.
            .arg("--allow-unreadable-runtime")
            .args(args);
        command
    }
}

impl Drop for StoreOwner {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}
