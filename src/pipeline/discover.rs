//! Input discovery: the image files under an input (or the input itself), sorted by relative path, with
//! the parts of the tree that could not be read and the image files of formats conjure does not read.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::imageio;

/// One input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputItem {
    pub path: PathBuf,
    /// Relative to the input root (the directory given, or the file's folder).
    pub rel: PathBuf,
    /// Position in the sorted input list (before sharding).
    pub index: usize,
}

/// The image files under `input` (or `input` itself), sorted by relative path. Hidden files and
/// conjure's temporaries are skipped, and so is `exclude` (the output folder when it lies inside the
/// input). The first problem met in the tree (see [`discover_all`]) is an error.
pub fn discover(input: &Path, exclude: Option<&Path>) -> Result<Vec<InputItem>> {
    let (items, mut problems) = discover_all(input, exclude)?;
    match problems.is_empty() {
        true => Ok(items),
        false => Err(problems.swap_remove(0).1),
    }
}

/// A part of the input tree that could not be read: the path and why.
pub type InputProblem = (PathBuf, Error);

/// Like [`discover`], but problems inside the tree do not stop the walk: symbolic-link loops, folders
/// that cannot be read, and image-named entries that cannot be examined (e.g. a dangling symbolic link
/// `x.png`) are returned beside the items, sorted by path. Dangling links with other names are ignored,
/// as non-image files are. An unreadable `input` itself is still an error.
pub fn discover_all(
    input: &Path,
    exclude: Option<&Path>,
) -> Result<(Vec<InputItem>, Vec<InputProblem>)> {
    let d = discover_tree(input, exclude)?;
    Ok((d.items, d.problems))
}

/// What [`discover_tree`] found under an input.
#[derive(Debug, Default)]
pub struct Discovered {
    pub items: Vec<InputItem>,
    pub problems: Vec<InputProblem>,
    /// Image files of a format conjure does not read (BMP, GIF, WebP, …), sorted; not restored, counted in
    /// the run's summary.
    pub unsupported: Vec<PathBuf>,
}

/// Extensions of image formats that are not read; such files are counted, not silently ignored.
const UNSUPPORTED_IMAGES: &[&str] = &[
    "bmp", "gif", "webp", "avif", "heic", "heif", "jp2", "j2k", "jxl", "ppm", "pgm", "pbm", "pnm",
    "tga", "ico", "dds", "exr", "hdr", "qoi",
];

/// Whether `path` names an image of a format conjure does not read.
pub fn is_unsupported_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| UNSUPPORTED_IMAGES.contains(&e.to_ascii_lowercase().as_str()))
}

/// [`discover_all`], plus the image files of unsupported formats.
pub fn discover_tree(input: &Path, exclude: Option<&Path>) -> Result<Discovered> {
    let meta = std::fs::metadata(input).map_err(|e| Error::io(input, e))?;
    if meta.is_file() {
        let name = input
            .file_name()
            .map(PathBuf::from)
            .ok_or_else(|| Error::invalid("input", input.display(), "a file or directory"))?;
        if !imageio::is_image_path(input) {
            return Err(Error::invalid(
                "input",
                input.display(),
                "an image file (png, tif, tiff, jpg, jpeg) or a directory",
            ));
        }
        return Ok(Discovered {
            items: vec![InputItem {
                path: input.to_path_buf(),
                rel: name,
                index: 0,
            }],
            ..Default::default()
        });
    }
    walk(input, exclude, &imageio::is_image_path)
}

/// The files under the folder `input` that `accept` takes (by path), sorted by relative path, with the
/// problems met in the tree (see [`discover_all`]; a problem is reported only for folders and for paths
/// `accept` takes) and the image files of unsupported formats. Hidden files and folders, conjure's
/// temporaries and the folder `exclude` are skipped.
pub fn walk(
    input: &Path,
    exclude: Option<&Path>,
    accept: &dyn Fn(&Path) -> bool,
) -> Result<Discovered> {
    let exclude = exclude.and_then(|e| e.canonicalize().ok());
    let mut items = Vec::new();
    let mut problems: Vec<InputProblem> = Vec::new();
    let mut unsupported = Vec::new();
    let walker = walkdir::WalkDir::new(input)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            let hidden =
                e.depth() > 0 && e.file_name().to_str().is_some_and(|n| n.starts_with('.'));
            let excluded = exclude.as_ref().is_some_and(|x| {
                e.file_type().is_dir() && e.path().canonicalize().is_ok_and(|p| &p == x)
            });
            !hidden && !excluded
        });
    for entry in walker {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                let p = e.path().unwrap_or(input).to_path_buf();
                let message = if let Some(a) = e.loop_ancestor() {
                    format!(
                        "symbolic link loop: {} points to its ancestor {}; not followed",
                        p.display(),
                        a.display()
                    )
                } else {
                    let dir = p.is_dir();
                    if !dir && !accept(&p) {
                        continue;
                    }
                    let what = if dir {
                        "cannot read folder"
                    } else if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_symlink()) {
                        "broken symbolic link"
                    } else {
                        "cannot read"
                    };
                    let cause = e
                        .io_error()
                        .map(|io| io.to_string())
                        .unwrap_or_else(|| e.to_string());
                    format!("{what}: {cause}")
                };
                let err = Error::io(&p, std::io::Error::other(message));
                problems.push((p, err));
                continue;
            }
        };
        if !entry.file_type().is_file() {
            continue;
        }
        if !accept(entry.path()) || imageio::is_temp_path(entry.path()) {
            if is_unsupported_image(entry.path()) && !imageio::is_temp_path(entry.path()) {
                unsupported.push(entry.path().to_path_buf());
            }
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(input)
            .expect("walkdir yields paths under the root")
            .to_path_buf();
        items.push(InputItem {
            path: entry.path().to_path_buf(),
            rel,
            index: 0,
        });
    }
    items.sort_by(|a, b| a.rel.components().cmp(b.rel.components()));
    for (i, it) in items.iter_mut().enumerate() {
        it.index = i;
    }
    problems.sort_by(|a, b| a.0.cmp(&b.0));
    unsupported.sort();
    Ok(Discovered {
        items,
        problems,
        unsupported,
    })
}
