//! Builds are tenant code: as root, a build command runs as the app's own user, in the mount
//! namespace and cgroups its instances get, and a static site never leads the proxy (which
//! runs as root) out of its directory. These tests need root (per-app users); as another user
//! they check only what applies there.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use gilgal_testkit::Backend;

use super::{ok, stderr, stdout, ServerProcess, PASSWORD};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

async fn start_logged_in() -> ServerProcess {
    let server = ServerProcess::start(Backend::Sqlite).await;
    ok(server.cli(
        &[
            "register",
            "--email",
            "admin@example.com",
            "--password-stdin",
        ],
        Some(PASSWORD),
    ));
    server
}

/// A static site source: `gilgal.toml` serving `public/` after `command`, plus `files`.
fn static_site(command: Option<&str>, files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut toml = "[build]\nbuilder = \"static\"\n".to_owned();
    if let Some(command) = command {
        toml.push_str(&format!("command = {command:?}\n"));
    }
    toml.push_str("\n[static]\ndir = \"public\"\n");
    std::fs::write(dir.path().join("gilgal.toml"), toml).unwrap();
    std::fs::create_dir(dir.path().join("public")).unwrap();
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    dir
}

fn deploy(server: &ServerProcess, source: &Path, project: &str) -> std::process::Output {
    server.cli(
        &["deploy", source.to_str().unwrap(), "--project", project],
        None,
    )
}

async fn get_path(server: &ServerProcess, host: &str, path: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", server.proxy_url))
        .header("host", host)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Every file named `name` under `dir` (symlinks not followed).
pub(super) fn find_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name() == name {
            found.push(path.clone());
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(find_named(&path, name));
        }
    }
    found
}

const PROBE: &str = r#"
import os, sys
data = sys.argv[1]
def attempt(name, action):
    try:
        action()
        print(f"PROBE {name} ALLOWED", flush=True)
    except Exception as err:
        print(f"PROBE {name} REFUSED {type(err).__name__}", flush=True)
def listing(path):
    if not os.listdir(path):
        raise FileNotFoundError("empty")
def write(path):
    with open(path, "w") as out:
        out.write("intruder was here")
victim = os.path.join(data, "releases", "victim")
attempt("signing-key", lambda: open(os.path.join(data, "keys", "signing.key"), "rb").read())
attempt("master-key", lambda: open(os.path.join(data, "keys", "master.key"), "rb").read())
attempt("keys-listing", lambda: listing(os.path.join(data, "keys")))
attempt("database", lambda: open(os.path.join(data, "gilgal.db"), "rb").read())
attempt("other-app-release", lambda: listing(victim))
attempt("other-app-cache", lambda: listing(os.path.join(data, "cache", "victim")))
attempt("shadow", lambda: open("/etc/shadow").read())
attempt("write-etc", lambda: write("/etc/gilgal-intruder"))
attempt("write-data-dir", lambda: write(os.path.join(data, "gilgal-intruder")))
attempt("write-releases", lambda: write(os.path.join(data, "releases", "gilgal-intruder")))
attempt("write-other-app", lambda: write(os.path.join(victim, "gilgal-intruder")))
attempt("write-own-tree", lambda: write("public/index.html"))
print(f"PROBE uid {os.getuid()}", flush=True)
"#;

/// Hardening: a build command that tries to read the server's keys and database, another
/// app's release and `/etc/shadow`, and to write outside its tree, is refused every time;
/// it runs as the app's user, and the release it built ends up root's (read-only to the app).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_commands_cannot_reach_keys_other_apps_or_the_host() {
    let server = start_logged_in().await;
    let data_dir = server.dir.path().join("data");
    ok(server.cli(&["projects", "create", "victim"], None));
    ok(server.cli(&["projects", "create", "intruder"], None));
    let victim = static_site(None, &[]);
    std::fs::write(victim.path().join("public/index.html"), "victim page").unwrap();
    ok(deploy(&server, victim.path(), "victim"));

    let command = format!("python3 probe.py {}", data_dir.display());
    let intruder = static_site(Some(&command), &[("probe.py", PROBE)]);
    let out = deploy(&server, intruder.path(), "intruder");
    let printed = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "{printed}");
    let probes: Vec<&str> = printed
        .lines()
        .filter_map(|line| line.split_once("PROBE ").map(|(_, probe)| probe))
        .collect();
    assert_eq!(probes.len(), 13, "{printed}");
    let planted = Path::new("/etc/gilgal-intruder");
    if planted.exists() {
        // Do not leave it for the next run (or the machine) to find.
        let _ = std::fs::remove_file(planted);
        panic!("the build wrote to /etc: {printed}");
    }
    assert!(!data_dir.join("gilgal-intruder").exists());
    assert!(!data_dir.join("releases/gilgal-intruder").exists());
    if !is_root() {
        // No per-app users without root: the build runs as the server's user.
        return;
    }
    for probe in &probes[..11] {
        assert!(probe.contains(" REFUSED "), "{probe}\n{printed}");
    }
    assert_eq!(probes[11], "write-own-tree ALLOWED", "{printed}");
    let uid: u32 = probes[12].strip_prefix("uid ").unwrap().parse().unwrap();
    assert_ne!(uid, 0, "the build ran as root");
    // The page it wrote is served, from a tree the app can no longer change.
    let (status, body) = get_path(&server, "intruder.localhost", "/").await;
    assert_eq!((status, body.as_str()), (200, "intruder was here"));
    let built = find_named(&data_dir.join("releases"), "probe.py");
    assert_eq!(built.len(), 1, "{built:?}");
    let app_dir = built[0].parent().unwrap();
    for path in [app_dir.to_path_buf(), app_dir.join("public/index.html")] {
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.uid(), 0, "{} still belongs to the app", path.display());
        assert_eq!(meta.mode() & 0o022, 0, "{} is writable", path.display());
    }
    let victim_page = find_named(&data_dir.join("releases"), "index.html")
        .into_iter()
        .find(|path| std::fs::read_to_string(path).is_ok_and(|text| text == "victim page"));
    assert!(victim_page.is_some(), "the victim's release is intact");
}

/// Regression (hardening #4): a build that links `/etc` into its static root fails, naming
/// the link, and the path is not served; a link that passed the build check and was changed
/// afterwards is not followed at serve time either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_sites_never_serve_files_from_outside_their_directory() {
    let server = start_logged_in().await;
    ok(server.cli(&["projects", "create", "site"], None));
    let first = static_site(None, &[]);
    std::fs::write(first.path().join("public/index.html"), "home").unwrap();
    ok(deploy(&server, first.path(), "site"));

    let linking = static_site(Some("ln -s /etc public/host-etc"), &[]);
    std::fs::write(linking.path().join("public/index.html"), "home").unwrap();
    let out = deploy(&server, linking.path(), "site");
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("host-etc") && err.contains("outside"), "{err}");
    for path in ["/host-etc/passwd", "/host-etc/shadow"] {
        let (status, body) = get_path(&server, "site.localhost", path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(!body.contains("root:"), "{path}: {body}");
    }

    let aliasing = static_site(Some("ln -s index.html public/alias.html"), &[]);
    std::fs::write(aliasing.path().join("public/index.html"), "home").unwrap();
    ok(deploy(&server, aliasing.path(), "site"));
    let (status, body) = get_path(&server, "site.localhost", "/alias.html").await;
    assert_eq!((status, body.as_str()), (200, "home"));
    // Afterwards the link is replaced by one to the host's files.
    let links = find_named(&server.dir.path().join("data/releases"), "alias.html");
    assert_eq!(links.len(), 1, "{links:?}");
    let replacement = links[0].with_file_name(".alias.new");
    std::os::unix::fs::symlink("/etc/passwd", &replacement).unwrap();
    std::fs::rename(&replacement, &links[0]).unwrap();
    let (status, body) = get_path(&server, "site.localhost", "/alias.html").await;
    assert_eq!(status, 404, "{body}");
    assert!(!body.contains("root:"), "{body}");
    let (status, body) = get_path(&server, "site.localhost", "/").await;
    assert_eq!((status, body.as_str()), (200, "home"));
}
