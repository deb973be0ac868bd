//! The build context: the source directory as a tar stream for dockerd's build API, with the
//! files `.dockerignore` excludes left out, streamed while it is written (never held whole in
//! memory).
//!
//! `.dockerignore` is read with gitignore matching, every pattern anchored at the context root
//! (Docker's rule: `foo` means `/foo`, use `**/foo` for any depth), `!` exceptions and `#`
//! comments as in Docker. One difference: a directory excluded as a whole is not entered to
//! look for `!` exceptions inside it (write `dir/*` + `!dir/keep` instead of `dir` +
//! `!dir/keep`). The Dockerfile and `.dockerignore` are always sent, as Docker does.
//! Entries get uid/gid 0 (like the Docker CLI) and keep their mode and mtime; symlinks are
//! sent as symlinks, never followed; sockets and FIFOs are skipped.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use tokio::sync::mpsc;

use crate::error::DockerError;

/// Size of the chunks the tar stream is cut into.
const CHUNK_BYTES: usize = 256 * 1024;

/// What to exclude and add besides the directory's own files.
#[derive(Debug, Clone, Default)]
pub struct ContextSpec {
    /// Extra `.dockerignore`-style patterns (e.g. `.git`, `node_modules` for generated
    /// Dockerfiles, so a stray local `node_modules` does not overwrite the image's).
    pub extra_ignores: Vec<String>,
    /// Files that are always sent even when ignored (the Dockerfile's path).
    pub always_include: Vec<String>,
    /// A file added to the context that is not on disk (a generated Dockerfile): name, bytes.
    pub generated: Option<(String, Vec<u8>)>,
}

/// Reads `<dir>/.dockerignore` (if any) plus `extra` patterns into a matcher.
pub fn dockerignore_matcher(dir: &Path, extra: &[String]) -> Result<Gitignore, DockerError> {
    let mut builder = GitignoreBuilder::new(dir);
    let path = dir.join(".dockerignore");
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(DockerError::Context { path, source }),
    };
    for line in text.lines().map(str::to_owned).chain(extra.iter().cloned()) {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (negate, pattern) = match trimmed.strip_prefix('!') {
            Some(rest) => ("!", rest.trim()),
            None => ("", trimmed),
        };
        // Docker cleans patterns as paths: `./a` and `/a` are `a`, all relative to the root.
        let pattern = pattern.trim_start_matches("./").trim_start_matches('/');
        if pattern.is_empty() {
            continue;
        }
        let anchored = format!("{negate}/{pattern}");
        builder
            .add_line(None, &anchored)
            .map_err(|err| DockerError::Context {
                path: path.clone(),
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad .dockerignore pattern {trimmed:?}: {err}"),
                ),
            })?;
    }
    builder.build().map_err(|err| DockerError::Context {
        path,
        source: io::Error::new(io::ErrorKind::InvalidData, err.to_string()),
    })
}

/// Writes the context of `dir` as a tar archive to `out`; returns the number of entries.
pub fn write_context(dir: &Path, spec: &ContextSpec, out: impl Write) -> Result<u64, DockerError> {
    let matcher = dockerignore_matcher(dir, &spec.extra_ignores)?;
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let mut count = 0u64;
    let generated_name = spec.generated.as_ref().map(|(name, _)| name.as_str());
    walk(
        dir,
        Path::new(""),
        &matcher,
        spec,
        generated_name,
        &mut builder,
        &mut count,
    )?;
    if let Some((name, bytes)) = &spec.generated {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        );
        builder
            .append_data(&mut header, name, bytes.as_slice())
            .map_err(|source| DockerError::Context {
                path: dir.join(name),
                source,
            })?;
        count += 1;
    }
    builder
        .into_inner()
        .and_then(|mut out| out.flush())
        .map_err(|source| DockerError::Context {
            path: dir.to_owned(),
            source,
        })?;
    Ok(count)
}

fn walk<W: Write>(
    root: &Path,
    rel: &Path,
    matcher: &Gitignore,
    spec: &ContextSpec,
    generated_name: Option<&str>,
    builder: &mut tar::Builder<W>,
    count: &mut u64,
) -> Result<(), DockerError> {
    let dir = root.join(rel);
    let context = |path: PathBuf| move |source| DockerError::Context { path, source };
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .map_err(context(dir.clone()))?
        .collect::<Result<_, _>>()
        .map_err(context(dir.clone()))?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let rel_path = rel.join(entry.file_name());
        let full = root.join(&rel_path);
        let meta = fs::symlink_metadata(&full).map_err(context(full.clone()))?;
        let name = rel_path.to_string_lossy().into_owned();
        if rel.as_os_str().is_empty() && Some(name.as_str()) == generated_name {
            continue; // replaced by the generated file
        }
        let forced = name == ".dockerignore" || spec.always_include.contains(&name);
        if !forced
            && matcher
                .matched_path_or_any_parents(&rel_path, meta.is_dir())
                .is_ignore()
        {
            continue;
        }
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        header.set_uid(0);
        header.set_gid(0);
        let _ = header.set_username("");
        let _ = header.set_groupname("");
        let file_type = meta.file_type();
        if file_type.is_dir() {
            header.set_size(0);
            builder
                .append_data(&mut header, &rel_path, io::empty())
                .map_err(context(full.clone()))?;
            *count += 1;
            walk(
                root,
                &rel_path,
                matcher,
                spec,
                generated_name,
                builder,
                count,
            )?;
        } else if file_type.is_symlink() {
            let target = fs::read_link(&full).map_err(context(full.clone()))?;
            header.set_size(0);
            builder
                .append_link(&mut header, &rel_path, &target)
                .map_err(context(full.clone()))?;
            *count += 1;
        } else if file_type.is_file() {
            let file = fs::File::open(&full).map_err(context(full.clone()))?;
            builder
                .append_data(&mut header, &rel_path, file)
                .map_err(context(full.clone()))?;
            *count += 1;
        }
    }
    Ok(())
}

/// A `Write` that cuts what is written into chunks and sends them to an async receiver; used
/// from a blocking thread so the tar is streamed to dockerd as it is produced.
pub(crate) struct ChannelWriter {
    buffer: Vec<u8>,
    sender: mpsc::Sender<Bytes>,
}

impl ChannelWriter {
    pub(crate) fn new(sender: mpsc::Sender<Bytes>) -> Self {
        ChannelWriter {
            buffer: Vec::with_capacity(CHUNK_BYTES),
            sender,
        }
    }

    fn send_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(CHUNK_BYTES),
        ));
        self.sender.blocking_send(chunk).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "dockerd stopped reading the build context",
            )
        })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK_BYTES {
            self.send_buffer()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffer()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path, spec: &ContextSpec) -> Vec<String> {
        let mut out = Vec::new();
        write_context(dir, spec, &mut out).expect("context");
        let mut archive = tar::Archive::new(out.as_slice());
        let mut names: Vec<String> = archive
            .entries()
            .expect("entries")
            .map(|entry| {
                let entry = entry.expect("entry");
                assert_eq!(entry.header().uid().expect("uid"), 0);
                entry
                    .path()
                    .expect("path")
                    .to_string_lossy()
                    .trim_end_matches('/')
                    .to_owned()
            })
            .collect();
        names.sort();
        names
    }

    #[test]
    fn dockerignore_is_anchored_and_supports_exceptions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("src/build")).expect("mkdir");
        fs::create_dir_all(root.join("node_modules/x")).expect("mkdir");
        fs::create_dir_all(root.join("logs")).expect("mkdir");
        for file in [
            "app.py",
            "secret.env",
            "src/main.py",
            "src/secret.env",
            "src/build/out.o",
            "node_modules/x/index.js",
            "logs/a.log",
            "logs/keep.log",
            "Dockerfile",
        ] {
            fs::write(root.join(file), file).expect("write");
        }
        fs::write(
            root.join(".dockerignore"),
            "# comment\nsecret.env\n**/build\nlogs/*\n!logs/keep.log\nDockerfile\n",
        )
        .expect("write");
        std::os::unix::fs::symlink("app.py", root.join("link.py")).expect("symlink");
        let spec = ContextSpec {
            extra_ignores: vec!["node_modules".into()],
            always_include: vec!["Dockerfile".into()],
            generated: None,
        };
        assert_eq!(
            names(root, &spec),
            [
                ".dockerignore",
                "Dockerfile",
                "app.py",
                "link.py",
                "logs",
                "logs/keep.log",
                "src",
                "src/main.py",
                "src/secret.env",
            ]
        );
    }

    #[test]
    fn generated_dockerfile_is_added() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("index.html"), "hi").expect("write");
        let spec = ContextSpec {
            generated: Some(("Dockerfile.gilgal".into(), b"FROM scratch\n".to_vec())),
            ..Default::default()
        };
        assert_eq!(
            names(dir.path(), &spec),
            ["Dockerfile.gilgal", "index.html"]
        );
    }
}
