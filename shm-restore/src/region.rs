//! The region the supervisor owns: a memfd of the requested size, sealed
//! against growing, shrinking and further seals, its memory reserved up front.

use std::fs::File;

use anyhow::{Context, Result};
use rustix::fs::{FallocateFlags, fallocate};

use crate::memory::Room;

/// The supervisor's region.
pub struct HostRegion {
    memfd: memfd::Memfd,
    len: u64,
}

impl HostRegion {
    /// Creates the memfd of `room`'s length, sizes it, reserves its memory
    /// and seals it. The memory check made `room` (see
    /// [`crate::memory::ensure_room`]); a reservation that fails all the
    /// same fails here, with a clear error, instead of killing the program
    /// with SIGBUS later.
    pub fn create(room: Room) -> Result<HostRegion> {
        let len = room.len();
        let memfd = memfd::MemfdOptions::default()
            .allow_sealing(true)
            .close_on_exec(true)
            .create("shm-snapshot")
            .context("creating the region's memfd")?;
        memfd
            .as_file()
            .set_len(len)
            .with_context(|| format!("sizing the region to {len} bytes"))?;
        let region = HostRegion { memfd, len };
        region.reserve()?;
        for seal in [
            memfd::FileSeal::SealShrink,
            memfd::FileSeal::SealGrow,
            memfd::FileSeal::SealSeal,
        ] {
            region
                .memfd
                .add_seal(seal)
                .context("sealing the region's memfd")?;
        }
        Ok(region)
    }

    /// Takes over a memfd made by an earlier supervisor and handed back by
    /// the service manager. Only a memfd sealed as [`HostRegion::create`]
    /// seals one, of exactly `len` bytes, is accepted: without the size
    /// seals it could change size under the read-only mapping, without
    /// `F_SEAL_SEAL` whoever else holds it could still seal it against
    /// writes, and with a write seal the unit table cannot be rewritten nor
    /// the program map it writable. Anything else may hold another region.
    /// Returns why it was refused otherwise. Its content is not checked here.
    pub fn adopt(file: File, len: u64) -> std::result::Result<HostRegion, String> {
        let memfd = memfd::Memfd::try_from_file(file).map_err(|_| "it is not a memfd".to_owned())?;
        let seals = memfd
            .seals()
            .map_err(|e| format!("its seals cannot be read ({e})"))?;
        use memfd::FileSeal::{SealFutureWrite, SealGrow, SealSeal, SealShrink, SealWrite};
        if ![SealShrink, SealGrow, SealSeal].iter().all(|s| seals.contains(s)) {
            return Err("it is not sealed against growing, shrinking and further seals".into());
        }
        if seals.contains(&SealWrite) || seals.contains(&SealFutureWrite) {
            return Err("it is sealed against writes".into());
        }
        let actual = memfd
            .as_file()
            .metadata()
            .map_err(|e| format!("its size cannot be read ({e})"))?
            .len();
        if actual != len {
            return Err(format!("it holds {} but --size is {}", human(actual), human(len)));
        }
        Ok(HostRegion { memfd, len })
    }

    fn reserve(&self) -> Result<()> {
        fallocate(self.file(), FallocateFlags::empty(), 0, self.len)
            .map_err(std::io::Error::from)
            .with_context(|| {
                format!(
                    "reserving {} of memory for the region (lower --size or free memory)",
                    human(self.len)
                )
            })
    }

    /// The memfd.
    pub fn file(&self) -> &File {
        self.memfd.as_file()
    }

    /// The region's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Makes the region all zero again (a blank region), keeping its memory
    /// reserved.
    pub fn clear(&self) -> Result<()> {
        fallocate(
            self.file(),
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            0,
            self.len,
        )
        .map_err(std::io::Error::from)
        .context("clearing the region")?;
        self.reserve()
    }
}

/// `n` bytes in binary units, for messages.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
