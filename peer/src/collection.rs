//! Files in and out of blob collections (the format iroh's file-sending tools
//! use for a file or a directory): which files a path names, and where each
//! name from a peer may be written.
//!
//! A collection's names come from whoever made it, so they are untrusted:
//! before anything is written, every name must be a relative path of plain
//! components that stays under the output directory, no two names may be the
//! same, and the directory must be new or empty.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, bail};

/// Most files one collection may hold (in or out).
pub const MAX_FILES: usize = 100_000;
/// Longest name, in bytes.
pub const MAX_NAME: usize = 1024;

/// The files `path` names, each with its collection name: a file alone (its
/// file name), or every file under a directory (paths relative to it, `/`
/// between components), sorted. Symbolic links are refused rather than
/// followed out of the tree.
pub fn files_under(path: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let meta = std::fs::symlink_metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if meta.is_file() {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no UTF-8 file name", path.display()))?;
        return Ok(vec![(name.to_string(), path.to_path_buf())]);
    }
    if !meta.is_dir() {
        bail!("{} is neither a file nor a directory", path.display());
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd =
            std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?;
        for entry in rd {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            let p = entry.path();
            let ft = entry.file_type()?;
            if ft.is_symlink() {
                bail!(
                    "{} is a symbolic link; collections hold plain files",
                    p.display()
                );
            } else if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let rel = p.strip_prefix(path).context("a file outside the tree")?;
                let parts: Option<Vec<&str>> =
                    rel.components().map(|c| c.as_os_str().to_str()).collect();
                let name = parts
                    .with_context(|| format!("{} is not a UTF-8 path", p.display()))?
                    .join("/");
                out.push((name, p));
                if out.len() > MAX_FILES {
                    bail!("{} holds more than {MAX_FILES} files", path.display());
                }
            }
        }
    }
    if out.is_empty() {
        bail!("{} holds no files", path.display());
    }
    out.sort();
    Ok(out)
}

/// Where each of `names` goes under `dir`, or why none may be written. `dir`
/// is created if it does not exist; it must be empty if it does.
pub fn targets<'a>(
    dir: &Path,
    names: impl IntoIterator<Item = &'a str>,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for name in names {
        if out.len() == MAX_FILES {
            bail!("the collection holds more than {MAX_FILES} files");
        }
        let path = checked_name(name)?;
        // Case-sensitive file systems only: two names that differ are two files.
        if !seen.insert(path.clone()) {
            bail!("the collection names {name:?} twice");
        }
        out.push(dir.join(path));
    }
    // A file and a directory of one name (`a` and `a/b`) cannot both exist.
    for p in &seen {
        let mut up = p.parent();
        while let Some(u) = up.filter(|u| !u.as_os_str().is_empty()) {
            if seen.contains(u) {
                bail!(
                    "the collection names {} both as a file and as a directory",
                    u.display()
                );
            }
            up = u.parent();
        }
    }
    match std::fs::read_dir(dir) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                bail!(
                    "{} is not empty; give a new directory for the collection",
                    dir.display()
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("{} is not a directory", dir.display())),
    }
    Ok(out)
}

/// A name as a relative path of plain components, or why it is not one.
fn checked_name(name: &str) -> anyhow::Result<PathBuf> {
    if name.is_empty() || name.len() > MAX_NAME {
        bail!(
            "a collection name must be 1 to {MAX_NAME} bytes, got {}",
            name.len()
        );
    }
    if name.contains('\0') || name.contains('\\') {
        bail!("the collection name {name:?} holds a NUL or a backslash");
    }
    let mut path = PathBuf::new();
    for part in name.split('/') {
        let c = Path::new(part).components().collect::<Vec<_>>();
        match c.as_slice() {
            [Component::Normal(n)] if *n == part => path.push(n),
            _ => bail!("the collection name {name:?} leaves its directory or has an empty part"),
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused_before_anything_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        for bad in [
            "../escape",
            "a/../../escape",
            "/etc/passwd",
            "",
            "a//b",
            "./a",
            "a/.",
            "a\\..\\b",
            "nul\0byte",
            "trailing/",
        ] {
            assert!(targets(&out, [bad]).is_err(), "{bad:?} was accepted");
            assert!(!out.exists(), "{bad:?} created the directory");
        }
        assert!(targets(&out, ["a", "a"]).is_err());
        assert!(targets(&out, ["a", "a/b"]).is_err());
        let long = "x".repeat(MAX_NAME + 1);
        assert!(targets(&out, [long.as_str()]).is_err());
    }

    #[test]
    fn plain_names_map_under_the_directory_and_it_must_be_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let t = targets(&out, ["a.txt", "sub/b.bin", "sub/deeper/c"]).unwrap();
        assert_eq!(t[1], out.join("sub").join("b.bin"));
        assert!(out.is_dir());
        std::fs::write(out.join("x"), b"x").unwrap();
        let e = targets(&out, ["a"]).unwrap_err().to_string();
        assert!(e.contains("not empty"), "{e}");
    }

    #[test]
    fn a_directory_lists_its_files_by_relative_name() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("d/sub")).unwrap();
        std::fs::write(tmp.path().join("d/one"), b"1").unwrap();
        std::fs::write(tmp.path().join("d/sub/two"), b"22").unwrap();
        let names: Vec<String> = files_under(&tmp.path().join("d"))
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["one", "sub/two"]);
        let single = files_under(&tmp.path().join("d/one")).unwrap();
        assert_eq!(single[0].0, "one");
        std::fs::create_dir_all(tmp.path().join("empty")).unwrap();
        assert!(files_under(&tmp.path().join("empty")).is_err());
    }
}
