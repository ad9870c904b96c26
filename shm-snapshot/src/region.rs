//! The region's memory: a shared mapping of a memfd (or regular file), seen
//! only as a slice of `AtomicU64`.
//!
//! No plain reference into the mapping is ever handed out. Another process
//! writes this memory at any moment, so every access goes through an atomic
//! operation; a concurrent write is then never undefined behaviour, only a
//! value the protocol in `FORMAT.md` has to cope with.

use crate::sync::AtomicU64;

#[cfg(not(loom))]
use {
    crate::env,
    crate::error::RegionError,
    rustix::fs::{FileType, SealFlags},
    rustix::mm::{MapFlags, ProtFlags},
    std::fs::File,
    std::os::fd::{AsFd, FromRawFd, OwnedFd},
    std::ptr::NonNull,
    std::sync::atomic::AtomicBool,
};

/// A mapped region.
///
/// Create one with [`Region::anonymous`] (a fresh sealed memfd, for running
/// without a supervisor and for tests), or take the one a supervisor handed
/// over with [`Region::from_env`].
pub struct Region {
    #[cfg(not(loom))]
    ptr: NonNull<AtomicU64>,
    #[cfg(not(loom))]
    len: usize,
    #[cfg(not(loom))]
    file: File,
    #[cfg(loom)]
    words: std::sync::Arc<[AtomicU64]>,
}

#[cfg(not(loom))]
// SAFETY: the mapping is shared memory accessed only through atomics (see
// `words`), and the `File` is Send + Sync; nothing here is tied to a thread.
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` only gives out `&[AtomicU64]`, which is Sync.
#[cfg(not(loom))]
unsafe impl Sync for Region {}

/// Set once the environment's region descriptor has been taken, so a second
/// `from_env` cannot create a second owner of the same fd.
#[cfg(not(loom))]
static ENV_TAKEN: AtomicBool = AtomicBool::new(false);

#[cfg(not(loom))]
impl Region {
    /// Creates a fresh all-zero region of `len` bytes in a new memfd, sealed
    /// against growing, shrinking and further seals. `len` must be a non-zero
    /// multiple of the page size for a client to lay it out.
    pub fn anonymous(len: u64) -> Result<Region, RegionError> {
        use rustix::fs::{MemfdFlags, fcntl_add_seals, ftruncate, memfd_create};
        let fd = memfd_create("shm-snapshot", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(|e| RegionError::io("creating a memfd", e))?;
        ftruncate(&fd, len).map_err(|e| RegionError::io("sizing the memfd", e))?;
        fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .map_err(|e| RegionError::io("sealing the memfd", e))?;
        // SAFETY: the memfd was created above and is sealed against shrinking,
        // so the mapping can never lose its backing pages.
        unsafe { Region::map(File::from(fd), ProtFlags::READ | ProtFlags::WRITE) }
    }

    /// Takes the region a supervisor handed to this process through
    /// `LISTEN_FDS`, `LISTEN_FDNAMES` (the entry `SHM_SHARED_FD`) and
    /// `LISTEN_PID`, marks the descriptor close-on-exec so the program's own
    /// children do not inherit it, and maps it read-write.
    ///
    /// # Safety
    ///
    /// The descriptor must not be owned by anything else in this process, and
    /// the file must not be shrunk while the region is mapped (touching pages
    /// past its end raises SIGBUS). `shm-restore` hands over a memfd sealed
    /// against shrinking, which meets the second condition. A second call in
    /// the same process returns an error instead of a second owner.
    pub unsafe fn from_env() -> Result<Region, RegionError> {
        let var = |name| std::env::var(name).ok();
        let fd = env::region_fd(
            var("LISTEN_FDS").as_deref(),
            var("LISTEN_FDNAMES").as_deref(),
            var("LISTEN_PID").as_deref(),
            std::process::id(),
        )?;
        // SAFETY: `fd` only borrows the number to ask the kernel whether it
        // is open; it is not used after this statement.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        if let Err(e) = rustix::io::fcntl_getfd(borrowed) {
            return Err(RegionError::io("checking the handed-over descriptor", e));
        }
        if ENV_TAKEN.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return Err(RegionError::EnvMalformed {
                var: "LISTEN_FDS",
                value: fd.to_string(),
                why: "the region descriptor was already taken by this process",
            });
        }
        // SAFETY: the descriptor is open (checked above), the caller promises
        // nothing else owns it, and ENV_TAKEN makes this the only
        // `from_env` that takes it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)
            .map_err(|e| RegionError::io("marking the region descriptor close-on-exec", e))?;
        // SAFETY: forwarded from this function's contract.
        unsafe { Region::from_file(File::from(owned)) }
    }

    /// Maps `file`, which must be a memfd or a regular file, read-write.
    ///
    /// # Safety
    ///
    /// The file must not be shrunk while the region is mapped: touching a
    /// page past its end raises SIGBUS. A memfd sealed with `F_SEAL_SHRINK`
    /// meets this.
    pub unsafe fn from_file(file: File) -> Result<Region, RegionError> {
        // SAFETY: forwarded from this function's contract.
        unsafe { Region::map(file, ProtFlags::READ | ProtFlags::WRITE) }
    }

    /// Maps `file` read-only: the host's view of a region a child writes.
    /// For a memfd sealed against shrinking,
    /// [`observe_file`](crate::snapshot::observe_file) checks the seal and
    /// needs no `unsafe`.
    ///
    /// # Safety
    ///
    /// As [`Region::from_file`]: the file must not shrink while mapped.
    #[cfg(feature = "host")]
    pub unsafe fn from_file_read_only(file: File) -> Result<Region, RegionError> {
        // SAFETY: forwarded from this function's contract.
        unsafe { Region::map(file, ProtFlags::READ) }
    }

    /// Fails with [`RegionError::NotSealed`] unless `file` is sealed
    /// against shrinking. A seal is never removed, so a file that passes
    /// never shrinks: it meets the safety contract of the mapping
    /// constructors for as long as it lives.
    #[cfg(feature = "host")]
    pub(crate) fn check_shrink_sealed(file: &File) -> Result<(), RegionError> {
        use rustix::io::Errno;
        let seals = match rustix::fs::fcntl_get_seals(file) {
            Ok(seals) => seals,
            // A file that cannot carry seals (not a memfd or tmpfs file).
            Err(Errno::INVAL) => SealFlags::empty(),
            Err(e) => return Err(RegionError::io("reading the region's seals", e)),
        };
        if !seals.contains(SealFlags::SHRINK) {
            return Err(RegionError::NotSealed { seals: seals.bits() });
        }
        Ok(())
    }

    /// # Safety
    ///
    /// `file` must not shrink while mapped.
    unsafe fn map(file: File, prot: ProtFlags) -> Result<Region, RegionError> {
        let stat =
            rustix::fs::fstat(&file).map_err(|e| RegionError::io("inspecting the region descriptor", e))?;
        let kind = match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => None,
            FileType::Directory => Some("directory"),
            FileType::Socket => Some("socket"),
            FileType::Fifo => Some("pipe"),
            FileType::CharacterDevice => Some("character device"),
            FileType::BlockDevice => Some("block device"),
            FileType::Symlink => Some("symbolic link"),
            FileType::Unknown => Some("file of unknown type"),
        };
        if let Some(kind) = kind {
            use std::os::fd::AsRawFd;
            return Err(RegionError::NotAFile {
                fd: file.as_raw_fd(),
                kind,
            });
        }
        let len = stat.st_size as u64;
        if len < crate::layout::HEADER_BYTES {
            return Err(RegionError::TooSmall {
                len,
                needed: crate::layout::HEADER_BYTES,
            });
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l as u64 <= crate::layout::limits::MAX_REGION)
            .ok_or(RegionError::ImpossibleField {
                field: "region length",
                value: len,
                why: "above the maximum",
            })?;
        let null = std::ptr::null_mut();
        // SAFETY: a fresh shared mapping placed by the kernel (null hint), of
        // the file's length, aliasing no Rust object; the caller guarantees
        // the file does not shrink while mapped.
        let ptr = unsafe { rustix::mm::mmap(null, len, prot, MapFlags::SHARED, file.as_fd(), 0) }
            .map_err(|e| RegionError::io("mapping the region", e))?;
        let ptr = NonNull::new(ptr.cast::<AtomicU64>()).expect("mmap never returns null on success");
        Ok(Region { ptr, len, file })
    }

    /// The file behind the region, e.g. to hand to an observer.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The region's length in bytes.
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    /// Whether the region has no bytes (never true for a mapped region).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The region as words. Every byte of the format lives in one of them.
    pub(crate) fn words(&self) -> &[AtomicU64] {
        // Other processes write this memory, but only atomic accesses are
        // made through the slice, so their writes never race a plain access.
        // Loads through a read-only mapping are valid: AtomicU64 is lock-free
        // here and the host only loads (Relaxed/Acquire) through one.
        //
        // SAFETY: `ptr` is a page-aligned mapping of `len` bytes that lives
        // as long as `self` (unmapped in Drop); AtomicU64 is a u64 in size and
        // alignment.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len / 8) }
    }
}

#[cfg(not(loom))]
impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `map`, and no
        // reference from `words` outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(loom)]
impl Region {
    /// A modelled region of `len` zero bytes for loom.
    pub fn model(len: u64) -> Region {
        Region {
            words: (0..len / 8).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The region's length in bytes.
    pub fn len(&self) -> u64 {
        self.words.len() as u64 * 8
    }

    pub(crate) fn words(&self) -> &[AtomicU64] {
        &self.words
    }

    /// A second handle on the same modelled memory.
    pub fn share(&self) -> Region {
        Region {
            words: self.words.clone(),
        }
    }
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region").field("len", &self.len()).finish()
    }
}
