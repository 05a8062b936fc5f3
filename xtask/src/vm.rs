//! `cargo xtask vm`: boots Debian's 6.1 cloud kernel under qemu (software emulation; nested KVM
//! crashes on the CI machine kind) with the BPF LSM enabled, and runs `vm-check` there — every
//! program through 6.1's verifier, the eBPF source's fexit/LSM probes, its tracepoint and
//! fentry paths and fenced tracker queries in both modes on a kernel that, unlike this host,
//! accepts fexit and LSM programs.
//! `cargo xtask test` runs it as one test.
//!
//! The verdict comes only from the marker lines the guest prints (`RT-VM-RESULT: ok`); silence,
//! a kernel panic or the deadline is a failure, and qemu is killed and reaped whatever happens.

use std::{
    collections::BTreeSet,
    fmt,
    fs::{self, File},
    io::{BufRead as _, BufReader, BufWriter, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{cargo, run, setup};

/// What the host needs: the emulator and a statically linked busybox for the guest's userland.
const APT_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static"];
/// The metapackage whose dependency names the current 6.1 cloud kernel of Debian 12.
const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";
/// `bpf` must be listed for BPF LSM programs to run; the rest is Debian's default order.
const KERNEL_CMDLINE: &str = "console=ttyS0 lsm=lockdown,capability,landlock,yama,apparmor,bpf \
                              panic=-1 oops=panic rdinit=/init";
/// Where `apt-get install busybox-static` puts busybox (merged /usr or not).
const BUSYBOX_PATHS: &[&str] = &["/bin/busybox", "/usr/bin/busybox"];
/// The test programs run in the guest (from the `tests` package).
const GUEST_BINARIES: &[&str] = &["vm-check", "tracker-cli"];
/// Marker lines printed by the guest's `/init` and by `vm-check`.
const MARKER: &str = "RT-VM-";

/// How long a run may take by default, boot included; a warm run takes one to two minutes on
/// the CI machine kind (the random workload and the two trackers take most of it).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(360);

/// Options of `cargo xtask vm`.
pub struct VmOptions {
    /// Kill qemu and fail after this long (boot included).
    pub timeout: Duration,
    /// A kernel package to boot instead of what [`KERNEL_METAPACKAGE`] depends on.
    pub kernel_package: Option<String>,
    /// Copy every console line to our output, not only the markers.
    pub verbose: bool,
    /// `vm-check` steps to run instead of its default set (e.g. `overhead`).
    pub steps: Vec<String>,
}

impl Default for VmOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            kernel_package: None,
            verbose: false,
            steps: Vec::new(),
        }
    }
}

/// What one VM run showed.
pub struct VmSummary {
    kernel: String,
    booted_secs: Option<f64>,
    total: Duration,
    checks: Option<serde_json::Value>,
    passed: Vec<String>,
}

impl fmt::Display for VmSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let probe = |name: &str| {
            self.checks
                .as_ref()
                .and_then(|checks| checks[name]["state"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "?".to_owned())
        };
        write!(
            f,
            "vm: ok: kernel {}, booted in {} s, whole run {:.1} s; fexit {}, lsm {}; passed: {}",
            self.kernel,
            self.booted_secs
                .map_or_else(|| "?".to_owned(), |secs| format!("{secs:.1}")),
            self.total.as_secs_f64(),
            probe("fexit"),
            probe("lsm"),
            self.passed.join(", "),
        )
    }
}

/// Runs the whole harness: host packages, kernel, test binaries, initramfs, boot, verdict.
/// `env` is what setup chose for the eBPF build.
pub fn vm(env: &setup::SetupReport, options: &VmOptions) -> anyhow::Result<VmSummary> {
    let started = Instant::now();
    let step = setup::ensure_apt_packages(APT_PACKAGES)?;
    eprintln!("vm: {} {} ({})", step.name, step.outcome, step.detail);
    let cache = crate::target_dir().join("vm");
    fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;

    let (kernel_package, vmlinuz) = match &options.kernel_package {
        Some(package) => (package.clone(), ensure_kernel(&cache, package)?),
        None => current_kernel(&cache)?,
    };

    let mut build = cargo(env);
    build.args(["build", "-p", "tests"]);
    for binary in GUEST_BINARIES {
        build.args(["--bin", binary]);
    }
    run(&mut build)?;

    let initramfs = cache.join("initramfs.cpio");
    build_initramfs(&initramfs).context("cannot build the initramfs")?;
    let console_log = cache.join("console.log");
    let outcome = boot(&vmlinuz, &initramfs, &console_log, options)?;
    let failure = match outcome.result.as_deref() {
        Some("ok") if outcome.failed.is_empty() => None,
        Some(_) if !outcome.failed.is_empty() => Some(format!(
            "failed in the guest: {}",
            outcome.failed.join("; ")
        )),
        Some(other) => Some(format!("the guest reported: {other}")),
        None => Some(outcome.ended.clone()),
    };
    if let Some(failure) = failure {
        if !options.verbose && outcome.failed.is_empty() {
            eprintln!("vm: last console lines:");
            for line in &outcome.tail {
                eprintln!("  {line}");
            }
        }
        bail!(
            "VM run failed ({failure}); console log: {}",
            console_log.display()
        );
    }
    Ok(VmSummary {
        kernel: outcome.kernel.unwrap_or(kernel_package),
        booted_secs: outcome.booted_secs,
        total: started.elapsed(),
        checks: outcome.checks,
        passed: outcome.passed.into_iter().map(|(step, _)| step).collect(),
    })
}

/// The current kernel package and its cached image. Stale apt lists (a machine image whose
/// packages are all present, so setup never refreshed them) may name a kernel the mirror has
/// dropped since: then the lists are refreshed and the newer package is fetched.
fn current_kernel(cache: &Path) -> anyhow::Result<(String, PathBuf)> {
    let package = current_kernel_package()?;
    match ensure_kernel(cache, &package) {
        Ok(vmlinuz) => Ok((package, vmlinuz)),
        Err(error) => {
            eprintln!("vm: {error:#}; refreshing the apt lists and trying again");
            run(apt_get().arg("update"))?;
            let package = current_kernel_package()?;
            let vmlinuz = ensure_kernel(cache, &package)?;
            Ok((package, vmlinuz))
        }
    }
}

/// The kernel package [`KERNEL_METAPACKAGE`] currently depends on, from the local apt lists
/// (refreshed once if they do not know it, as on a fresh machine).
fn current_kernel_package() -> anyhow::Result<String> {
    let resolve = || -> anyhow::Result<Option<String>> {
        let output = Command::new("apt-cache")
            .args(["depends", KERNEL_METAPACKAGE])
            .output()
            .context("cannot run apt-cache")?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.trim().strip_prefix("Depends: "))
            .find(|package| package.starts_with("linux-image-"))
            .map(str::to_owned))
    };
    if let Some(package) = resolve()? {
        return Ok(package);
    }
    run(apt_get().arg("update"))?;
    resolve()?.with_context(|| format!("apt knows no kernel package behind {KERNEL_METAPACKAGE}"))
}

fn apt_get() -> Command {
    let mut command = Command::new("apt-get");
    command.env("DEBIAN_FRONTEND", "noninteractive");
    command
}

/// `<cache>/<package>/vmlinuz`, downloaded with `apt-get download` and cut out of the package
/// on first use. Only the kernel image is kept: the guest loads no modules.
fn ensure_kernel(cache: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let dir = cache.join(package);
    let vmlinuz = dir.join("vmlinuz");
    if vmlinuz.exists() {
        return Ok(vmlinuz);
    }
    let release = package
        .strip_prefix("linux-image-")
        .with_context(|| format!("{package} is not a linux-image package"))?;
    let download = tempfile::Builder::new()
        .prefix("download-")
        .tempdir_in(cache)
        .context("cannot make a download directory")?;
    eprintln!("vm: downloading {package}");
    run(apt_get()
        .current_dir(download.path())
        .args(["download", package]))?;
    let deb = fs::read_dir(download.path())?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb"))?;

    // dpkg-deb --fsys-tarfile | tar -xO ./boot/vmlinuz-<release> > vmlinuz.part
    let partial = download.path().join("vmlinuz.part");
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(&deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run dpkg-deb")?;
    let tarball = dpkg.stdout.take().context("dpkg-deb has no stdout")?;
    let tar_status = Command::new("tar")
        .args(["-x", "-O", "-f", "-"])
        .arg(format!("./boot/vmlinuz-{release}"))
        .stdin(tarball)
        .stdout(File::create(&partial).context("cannot create vmlinuz.part")?)
        .status()
        .context("cannot run tar")?;
    let dpkg_status = dpkg.wait().context("waiting for dpkg-deb")?;
    if !tar_status.success() || !dpkg_status.success() {
        bail!(
            "extracting /boot/vmlinuz-{release} from {} failed",
            deb.display()
        );
    }
    fs::create_dir_all(&dir)?;
    fs::rename(&partial, &vmlinuz)
        .with_context(|| format!("cannot move the kernel to {}", vmlinuz.display()))?;
    Ok(vmlinuz)
}

/// The guest's `/init`: mounts what the tracker reads (proc, sysfs, securityfs for the active
/// LSMs, tracefs for tracepoint ids, debugfs for the preemption model), runs `vm-check`, prints
/// the verdict and powers off.
const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t securityfs securityfs /sys/kernel/security
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
echo "RT-VM-BOOTED: $(cut -d' ' -f1 /proc/uptime)"
# `rt_steps=a,b` on the kernel command line names the steps to run (default: all but the
# slow `overhead` measurement).
/bin/vm-check $(sed -n 's/.*rt_steps=\([^ ]*\).*/\1/p' /proc/cmdline | tr , ' ')
status=$?
if [ "$status" = 0 ]; then
    echo "RT-VM-RESULT: ok"
else
    echo "RT-VM-RESULT: vm-check failed with exit status $status"
fi
echo "RT-VM-DONE: $(cut -d' ' -f1 /proc/uptime)"
poweroff -f
"#;

/// Writes the initramfs: busybox, `/init`, the test binaries (stripped) and every shared
/// library `ldd` names for them, at the paths the dynamic loader will look for.
fn build_initramfs(out: &Path) -> anyhow::Result<()> {
    let busybox = BUSYBOX_PATHS
        .iter()
        .map(Path::new)
        .find(|path| path.exists())
        .context("busybox-static is installed but no busybox binary was found")?;
    let bin_dir = crate::target_dir().join("debug");
    let staging = tempfile::tempdir().context("cannot make a staging directory")?;

    let mut files: Vec<(PathBuf, PathBuf, u32)> =
        vec![(busybox.to_owned(), "bin/busybox".into(), 0o755)];
    let mut libraries = BTreeSet::new();
    for binary in GUEST_BINARIES {
        let built = bin_dir.join(binary);
        libraries.extend(shared_libraries(&built)?);
        files.push((
            stripped(&built, staging.path())?,
            PathBuf::from("bin").join(binary),
            0o755,
        ));
    }
    for library in libraries {
        let inside = library
            .strip_prefix("/")
            .with_context(|| format!("ldd named a relative path {}", library.display()))?
            .to_owned();
        files.push((library, inside, 0o755));
    }

    let partial = out.with_extension("part");
    let mut cpio = Newc::new(BufWriter::new(
        File::create(&partial).with_context(|| format!("cannot create {}", partial.display()))?,
    ));
    let mut dirs: BTreeSet<PathBuf> = ["dev", "proc", "sys", "tmp", "run"]
        .iter()
        .map(PathBuf::from)
        .collect();
    for (_, inside, _) in &files {
        dirs.extend(
            inside
                .ancestors()
                .skip(1)
                .filter(|dir| !dir.as_os_str().is_empty())
                .map(Path::to_owned),
        );
    }
    // Sorted, so every parent comes before its children.
    for dir in &dirs {
        cpio.entry(dir, 0o040_755, &[], (0, 0))?;
    }
    // The kernel opens /dev/console for init's standard streams before any devtmpfs exists.
    cpio.entry(Path::new("dev/console"), 0o020_600, &[], (5, 1))?;
    cpio.entry(Path::new("init"), 0o100_755, INIT_SCRIPT.as_bytes(), (0, 0))?;
    for (source, inside, permissions) in &files {
        let contents =
            fs::read(source).with_context(|| format!("cannot read {}", source.display()))?;
        cpio.entry(inside, 0o100_000 | permissions, &contents, (0, 0))?;
    }
    cpio.finish()?;
    fs::rename(&partial, out).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}

/// A copy of `binary` without debug information (the guest's RAM holds the whole initramfs;
/// a debug build is mostly DWARF), or the binary itself where `strip` is unavailable.
fn stripped(binary: &Path, staging: &Path) -> anyhow::Result<PathBuf> {
    let name = binary.file_name().context("binary path has no file name")?;
    let copy = staging.join(name);
    let status = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&copy)
        .arg(binary)
        .status();
    match status {
        Ok(status) if status.success() => Ok(copy),
        _ => {
            eprintln!(
                "vm: strip failed or is missing; copying {} with its debug info",
                binary.display()
            );
            Ok(binary.to_owned())
        }
    }
}

/// The absolute paths of the shared libraries and loader `ldd` lists for `binary` (none for a
/// static binary).
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .with_context(|| format!("cannot run ldd {}", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        if text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&output.stderr).contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if let Some(missing) = text.lines().find(|line| line.contains("not found")) {
        bail!(
            "ldd {}: a library is missing: {}",
            binary.display(),
            missing.trim()
        );
    }
    Ok(parse_ldd(&text))
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` and `/lib64/ld-linux-x86-64.so.2 (0x…)`
/// name files; `linux-vdso.so.1 (0x…)` is the kernel's.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, resolved)) => resolved.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// A cpio archive in the "newc" format the kernel unpacks as initramfs.
struct Newc<W: std::io::Write> {
    out: W,
    written: u64,
    next_inode: u32,
}

impl<W: std::io::Write> Newc<W> {
    fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            next_inode: 1,
        }
    }

    /// One entry: `mode` carries the file type; `device` is (major, minor) for device nodes.
    fn entry(
        &mut self,
        name: &Path,
        mode: u32,
        data: &[u8],
        device: (u32, u32),
    ) -> anyhow::Result<()> {
        use std::os::unix::ffi::OsStrExt as _;
        let inode = self.next_inode;
        self.next_inode += 1;
        self.raw_entry(name.as_os_str().as_bytes(), inode, mode, data, device)
    }

    fn raw_entry(
        &mut self,
        name: &[u8],
        inode: u32,
        mode: u32,
        data: &[u8],
        (major, minor): (u32, u32),
    ) -> anyhow::Result<()> {
        let size = u32::try_from(data.len()).context("file too large for cpio newc")?;
        let name_size = u32::try_from(name.len() + 1).context("name too long")?;
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
        // rdevminor, namesize, check.
        let header = format!(
            "070701{inode:08X}{mode:08X}{:08X}{:08X}{nlink:08X}{:08X}{size:08X}{:08X}{:08X}{major:08X}{minor:08X}{name_size:08X}{:08X}",
            0, 0, 0, 0, 0, 0
        );
        self.write(header.as_bytes())?;
        self.write(name)?;
        self.write(&[0])?;
        self.pad()?;
        self.write(data)?;
        self.pad()
    }

    fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.out
            .write_all(bytes)
            .context("cannot write the initramfs")?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Header+name and data are each padded to a multiple of four bytes.
    fn pad(&mut self) -> anyhow::Result<()> {
        let padding = (4 - self.written % 4) % 4;
        self.write(&[0; 3][..padding as usize])
    }

    fn finish(mut self) -> anyhow::Result<()> {
        self.raw_entry(b"TRAILER!!!", 0, 0, &[], (0, 0))?;
        self.out.flush().context("cannot write the initramfs")
    }
}

/// What the guest said, as far as it got.
struct BootOutcome {
    /// The text after `RT-VM-RESULT: `.
    result: Option<String>,
    /// Why reading stopped without a result (deadline, qemu exit).
    ended: String,
    kernel: Option<String>,
    booted_secs: Option<f64>,
    checks: Option<serde_json::Value>,
    /// Steps of `vm-check` that passed, with what they showed.
    passed: Vec<(String, String)>,
    /// Steps that failed, with why (`step: reason`).
    failed: Vec<String>,
    /// The last console lines, for a failure report.
    tail: Vec<String>,
}

/// qemu, killed and reaped when dropped: no emulator outlives the run, whatever fails.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines kept for a failure report.
const TAIL_LINES: usize = 40;

/// Boots the kernel and reads the serial console until the guest's verdict, qemu's exit or the
/// deadline; every line goes to `console_log`.
fn boot(
    vmlinuz: &Path,
    initramfs: &Path,
    console_log: &Path,
    options: &VmOptions,
) -> anyhow::Result<BootOutcome> {
    let mut log = BufWriter::new(
        File::create(console_log)
            .with_context(|| format!("cannot create {}", console_log.display()))?,
    );
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args(["-nographic", "-no-reboot", "-m", "1024", "-smp", "2"])
        // One host thread runs both vCPUs: with a thread per vCPU (qemu's default), a guest
        // run once hung both CPUs at a jump label in syscall_trace_enter while the kernel
        // patched it (soft lockups for 260 s, under host load), which looks like
        // multi-threaded TCG's handling of code one vCPU rewrites under the other.
        .args(["-accel", "tcg,thread=single"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(if options.steps.is_empty() {
            KERNEL_CMDLINE.to_owned()
        } else {
            format!("{KERNEL_CMDLINE} rt_steps={}", options.steps.join(","))
        })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    eprintln!("vm: booting {} (software emulation)", vmlinuz.display());
    let mut qemu = Qemu(command.spawn().context("cannot start qemu-system-x86_64")?);
    let deadline = Instant::now() + options.timeout;

    // One reader thread per stream; both end when qemu's pipes close (it exited or was killed).
    let (lines, received) = mpsc::channel::<String>();
    let stdout = qemu.0.stdout.take().context("qemu has no stdout")?;
    let stderr = qemu.0.stderr.take().context("qemu has no stderr")?;
    let readers: Vec<_> = [
        Box::new(stdout) as Box<dyn std::io::Read + Send>,
        Box::new(stderr),
    ]
    .into_iter()
    .map(|stream| {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).split(b'\n') {
                let Ok(line) = line else { break };
                let text = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_owned();
                if lines.send(text).is_err() {
                    break;
                }
            }
        })
    })
    .collect();
    drop(lines);

    let mut outcome = BootOutcome {
        result: None,
        ended: String::new(),
        kernel: None,
        booted_secs: None,
        checks: None,
        passed: Vec::new(),
        failed: Vec::new(),
        tail: Vec::new(),
    };
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let line = match received.recv_timeout(remaining) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                outcome.ended = format!("no verdict within {} s", options.timeout.as_secs());
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                outcome.ended = "qemu exited before the guest gave a verdict".to_owned();
                break;
            }
        };
        writeln!(log, "{line}").context("cannot write the console log")?;
        if outcome.tail.len() == TAIL_LINES {
            outcome.tail.remove(0);
        }
        outcome.tail.push(line.clone());
        let marker = line.find(MARKER).map(|at| &line[at + MARKER.len()..]);
        if options.verbose || marker.is_some() {
            println!("guest: {line}");
        }
        let Some((name, value)) = marker.and_then(|marker| marker.split_once(": ")) else {
            continue;
        };
        match name {
            "KERNEL" => outcome.kernel = Some(value.to_owned()),
            "BOOTED" => outcome.booted_secs = value.trim().parse().ok(),
            "CHECKS" => outcome.checks = serde_json::from_str(value).ok(),
            "PASS" => {
                let (step, detail) = value.split_once(": ").unwrap_or((value, ""));
                outcome.passed.push((step.to_owned(), detail.to_owned()));
            }
            "FAIL" => outcome.failed.push(value.to_owned()),
            "RESULT" => {
                outcome.result = Some(value.to_owned());
                break;
            }
            _ => {}
        }
    }
    log.flush().context("cannot write the console log")?;
    // The guest powers off right after its verdict; give it a moment, then kill it.
    let grace = Instant::now() + Duration::from_secs(5);
    while Instant::now() < grace {
        if qemu.0.try_wait().context("waiting for qemu")?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(qemu);
    drop(received);
    for reader in readers {
        let _ = reader.join();
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_names_libraries_and_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n\
            \tlibmissing.so => not found\n";
        assert_eq!(
            parse_ldd(text),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn newc_entries_are_aligned_and_terminated() {
        let mut bytes = Vec::new();
        let mut cpio = Newc::new(&mut bytes);
        cpio.entry(Path::new("init"), 0o100_755, b"#!/bin/sh\n", (0, 0))
            .unwrap();
        cpio.finish().unwrap();
        assert!(bytes.starts_with(b"070701"));
        // Header (110) + "init\0" (5) padded to 116, data (10) padded to 12.
        assert_eq!(&bytes[116..126], b"#!/bin/sh\n");
        assert_eq!(&bytes[128..134], b"070701");
        assert_eq!(bytes.len() % 4, 0);
        let trailer = b"TRAILER!!!\0";
        assert_eq!(&bytes[128 + 110..128 + 110 + trailer.len()], trailer);
    }
}
