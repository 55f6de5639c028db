//! The service unit and the Debian package: `systemd-analyze verify` and `security` offline, the
//! shipped conffile and profiles validate, and the amd64 package built by `scripts/package` (run
//! by scripts/test before the tests) passes lintian and installs, upgrades and purges cleanly in a
//! debootstrap chroot.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_fieldbridge");

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A root directory with the host's system units, our unit, and the binary at /usr/bin, so the
/// unit is checked as it would be installed.
fn unit_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let units = dir.path().join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    std::fs::create_dir_all(dir.path().join("usr/bin")).unwrap();
    let st = Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system/."])
        .arg(&units)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::copy(
        root().join("systemd/fieldbridge.service"),
        units.join("fieldbridge.service"),
    )
    .unwrap();
    std::fs::copy(BIN, dir.path().join("usr/bin/fieldbridge")).unwrap();
    // ExecReload's /bin/kill, in a merged-/usr layout as on Debian 12.
    std::fs::copy("/usr/bin/kill", dir.path().join("usr/bin/kill")).unwrap();
    std::os::unix::fs::symlink("usr/bin", dir.path().join("bin")).unwrap();
    dir
}

#[test]
fn systemd_analyze_verify_prints_nothing_for_the_unit() {
    let r = unit_root();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", r.path().display()))
        .arg("fieldbridge.service")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.is_empty(), "{text}");
}

#[test]
fn unit_exposure_is_at_most_1_5() {
    let r = unit_root();
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=15"])
        .arg(format!("--root={}", r.path().display()))
        .arg("fieldbridge.service")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no score in {text}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unparsable: {line}"));
    assert!(score <= 1.5, "{line}");
    assert!(out.status.success(), "threshold gate failed: {line}");
}

#[test]
fn the_default_conffile_and_every_device_profile_validate() {
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(root().join("debian/fieldbridge.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every shipped profile file, named by path, through the real loader and validation.
    let dir = tempfile::tempdir().unwrap();
    let mut profiles = 0;
    for e in std::fs::read_dir(root().join("hardware/profiles")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().and_then(|s| s.to_str()).unwrap().to_string();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.contains(&format!("name = \"{name}\"")),
            "{}: the file is named after the profile",
            p.display()
        );
        let cfg = format!(
            "[gateway]\nid = \"gw\"\ndata_dir = \"/tmp\"\n\n[[buses]]\nname = \"rs485\"\nkind = \"serial\"\npath = \"/dev/ttyUSB0\"\n\n[[devices]]\nname = \"d\"\nkind = \"modbus_rtu\"\nbus = \"rs485\"\nprofile = \"{}\"\n",
            p.display()
        );
        let f = dir.path().join("c.toml");
        std::fs::write(&f, &cfg).unwrap();
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&f)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}\n{cfg}",
            p.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        profiles += 1;
    }
    assert!(profiles >= 3);
}

#[test]
fn the_installed_default_config_does_not_contradict_the_readme_on_broker_authentication() {
    let conf = std::fs::read_to_string(root().join("debian/fieldbridge.toml")).unwrap();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    // The README's Security section describes users, ACLs and TLS for the embedded broker.
    assert!(readme.contains("[[broker.users]]"));
    assert!(!conf.contains("no authentication"), "{conf}");
    assert!(conf.contains("\"Security\""), "{conf}");
}

fn amd64_deb() -> PathBuf {
    let dir = root().join("target/debian");
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/package amd64 first", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("fieldbridge_") && n.ends_with("_amd64.deb"))
        })
        .collect();
    debs.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    debs.pop()
        .expect("no fieldbridge_*_amd64.deb in target/debian; run scripts/package amd64 first")
}

#[test]
fn the_amd64_package_is_lintian_clean() {
    let out = Command::new("lintian")
        .args(["--fail-on", "warning"])
        .arg(amd64_deb())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Installs the package into a fresh debootstrap chroot (inside a private mount namespace, so
/// no mount leaks to the host), then checks user, group, conffile, unit, running as the user,
/// an upgrade that keeps an edited conffile, and a purge that removes state and user.
const CHROOT_SCRIPT: &str = r#"
set -eu
deb="$1"; base="$2"; work="$3"
if [ ! -f "$base" ]; then
  debootstrap --variant=minbase --include=systemd-standalone-sysusers,init-system-helpers bookworm "$work/build" http://deb.debian.org/debian >/dev/null
  tar -C "$work/build" -czf "$base.tmp" . && mv "$base.tmp" "$base"
  rm -rf "$work/build"
fi
R="$work/root"
mkdir -p "$R"
tar -C "$R" -xzf "$base"
mount -t proc proc "$R/proc"
trap 'umount "$R/proc"' EXIT
cp "$deb" "$R/tmp/fieldbridge.deb"
inroot() { chroot "$R" "$@"; }
inroot dpkg -i /tmp/fieldbridge.deb >/dev/null

# dpkg --verify checks the installed files against the package's md5sums, and sees a change.
echo "md5sums: $(inroot sh -c 'f=$(dpkg-query --control-path fieldbridge md5sums) && grep -c . "$f"' || echo none)"
echo "verify: $(inroot dpkg --verify fieldbridge && echo clean)"
echo >> "$R/usr/share/fieldbridge/profiles/eastron-sdm120.toml"
echo "verify after a change: $(inroot dpkg --verify fieldbridge | tr '\n' ' ')"

echo "user: $(inroot getent passwd fieldbridge | cut -d: -f1,6,7)"
echo "groups: $(inroot id -nG fieldbridge)"
echo "conffiles: $(inroot dpkg-query -W -f='${Conffiles}' fieldbridge | awk '{print $1}' | tr '\n' ' ')"
echo "unit: $(inroot ls /usr/lib/systemd/system/fieldbridge.service)"
echo "enabled: $(inroot ls /etc/systemd/system/multi-user.target.wants/ 2>/dev/null | tr '\n' ' ')"
echo "version as user: $(inroot runuser -u fieldbridge -- fieldbridge --version)"
echo "check as user: $(inroot runuser -u fieldbridge -- fieldbridge check --config /etc/fieldbridge/fieldbridge.toml)"
echo "profiles: $(inroot ls /usr/share/fieldbridge/profiles | tr '\n' ' ')"
echo "examples: $(inroot ls /usr/share/fieldbridge/examples | tr '\n' ' ')"

# An edited config survives an upgrade (a reinstall runs the same upgrade path).
sed -i 's/^id = "gw-01"/id = "edited-gw"/' "$R/etc/fieldbridge/fieldbridge.toml"
inroot dpkg -i /tmp/fieldbridge.deb >/dev/null
echo "after upgrade: $(grep '^id = ' "$R/etc/fieldbridge/fieldbridge.toml")"

# State as the service would leave it; purge must remove it with the user.
mkdir -p "$R/var/lib/fieldbridge"; echo x > "$R/var/lib/fieldbridge/outbox.db"
inroot chown -R fieldbridge:fieldbridge /var/lib/fieldbridge
inroot dpkg --purge fieldbridge >/dev/null
echo "after purge: user=$(inroot getent passwd fieldbridge || echo none) group=$(inroot getent group fieldbridge || echo none) etc=$( [ -e "$R/etc/fieldbridge" ] && echo present || echo gone) state=$( [ -e "$R/var/lib/fieldbridge" ] && echo present || echo gone) bin=$( [ -e "$R/usr/bin/fieldbridge" ] && echo present || echo gone)"
"#;

#[test]
fn the_amd64_package_installs_upgrades_and_purges_cleanly_in_a_chroot() {
    let deb = amd64_deb();
    let work = tempfile::tempdir().unwrap();
    // The bare chroot is cached under target/ (debootstrap takes about 30 s).
    let base = root().join("target/chroot-bookworm-minbase.tar.gz");
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            CHROOT_SCRIPT,
            "sh",
        ])
        .arg(&deb)
        .arg(&base)
        .arg(work.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{text}");
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |k: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}: ")))
            .unwrap_or_else(|| panic!("no {k} in {text}"))
            .to_string()
    };
    assert_eq!(
        line("user"),
        "fieldbridge:/var/lib/fieldbridge:/usr/sbin/nologin"
    );
    let groups = line("groups");
    assert!(groups.split(' ').any(|g| g == "fieldbridge"), "{groups}");
    assert!(groups.split(' ').any(|g| g == "dialout"), "{groups}");
    assert!(line("conffiles").contains("/etc/fieldbridge/fieldbridge.toml"));
    let sums: usize = line("md5sums").parse().unwrap_or(0);
    assert!(sums >= 5, "md5sums lines: {}", line("md5sums"));
    assert_eq!(line("verify"), "clean");
    assert!(
        line("verify after a change")
            .contains("/usr/share/fieldbridge/profiles/eastron-sdm120.toml"),
        "{text}"
    );
    assert_eq!(line("unit"), "/usr/lib/systemd/system/fieldbridge.service");
    assert!(line("enabled").contains("fieldbridge.service"), "{text}");
    assert_eq!(
        line("version as user"),
        format!("fieldbridge {}", env!("CARGO_PKG_VERSION"))
    );
    assert!(line("check as user").contains("valid"), "{text}");
    assert!(line("profiles").contains("eastron-sdm120.toml"));
    assert!(line("examples").contains("fieldbridge.example.toml"));
    assert_eq!(line("after upgrade"), "id = \"edited-gw\"");
    assert_eq!(
        line("after purge"),
        "user=none group=none etc=gone state=gone bin=gone"
    );
}
