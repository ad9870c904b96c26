//! `shm-restore export DIR -o FILE`: a generation as a raw region image,
//! exactly the bytes a restore puts in the region, which a program (or any
//! tool that reads FORMAT.md) can open. Reads the store only.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use rustix::fs::{CWD, RenameFlags, renameat_with};
use shm_snapshot::snapshot;

use super::args::Export;
use super::load;
use super::show::human;
use super::store::open_read_only;

/// Runs `export`.
pub fn run(a: &Export) -> Result<ExitCode> {
    if !a.force && std::fs::symlink_metadata(&a.output).is_ok() {
        bail!("{} exists; use --force to replace it", a.output.display());
    }
    let mut store = open_read_only(&a.dir)?;
    let loaded = match a.generation {
        Some(n) => {
            load::generation(&mut store, n).with_context(|| format!("cannot export generation {n}"))?
        }
        None => match load::newest(&mut store) {
            Ok(Some(loaded)) => loaded,
            Ok(None) => bail!("{} holds no generation to export", a.dir.display()),
            Err(e) => return Err(e).context("cannot export"),
        },
    };
    let temp = temp_beside(&a.output);
    let written = write_image(&temp, &loaded).and_then(|units| {
        place(&temp, &a.output, a.force)?;
        Ok(units)
    });
    let units = match written {
        Ok(units) => units,
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
    };
    println!(
        "exported generation {} ({} region, {units} units) to {}",
        loaded.number,
        human(loaded.image.len() as u64),
        a.output.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// A temporary name in the output's directory, so the rename stays on one
/// file system.
fn temp_beside(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map_or_else(|| "image".into(), |n| n.to_string_lossy().into_owned());
    output.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Writes the restored region into a new file at `path` and syncs it;
/// returns the units it holds.
fn write_image(path: &Path, loaded: &shm_snapshot::store::Loaded) -> Result<usize> {
    let file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    // The same code that fills the supervisor's region: the image, then the
    // unit table and counters rewritten from the generation's meta.
    let restored = snapshot::restore(&file, loaded)
        .with_context(|| format!("generation {} does not hold a usable region", loaded.number))?;
    file.sync_all()
        .with_context(|| format!("cannot sync {}", path.display()))?;
    Ok(restored.units)
}

/// Renames the finished `temp` to `output`: never over an existing file
/// unless `force`.
fn place(temp: &Path, output: &Path, force: bool) -> Result<()> {
    let flags = if force {
        RenameFlags::empty()
    } else {
        RenameFlags::NOREPLACE
    };
    match renameat_with(CWD, temp, CWD, output, flags) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::EXIST) => {
            bail!("{} exists; use --force to replace it", output.display())
        }
        Err(e) => Err(std::io::Error::from(e))
            .with_context(|| format!("cannot rename {} to {}", temp.display(), output.display())),
    }
}
