//! A [`StoreIo`] that fails on demand, for fault-injection tests: fail the
//! Nth operation once (a transient device error), or every operation from
//! the Nth on until healed (a full disk).

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use super::io::{LockAttempt, ReadFile, StoreFile, StoreIo};

/// A kind of [`StoreIo`] operation, as [`FaultyIo`] counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IoOp {
    /// [`StoreIo::create_dir_all`].
    CreateDir,
    /// [`StoreIo::lock`].
    Lock,
    /// [`StoreIo::list`].
    List,
    /// [`StoreIo::create_new`].
    Create,
    /// [`StoreFile::write_all`].
    Write,
    /// [`StoreFile::sync`].
    SyncFile,
    /// [`StoreFile::sync_data`].
    SyncData,
    /// [`StoreFile::truncate`].
    Truncate,
    /// [`StoreIo::open_read`].
    Open,
    /// [`StoreIo::rename`].
    Rename,
    /// [`StoreIo::sync_dir`].
    SyncDir,
    /// [`StoreIo::remove`].
    Remove,
}

impl IoOp {
    /// The operations that change the file system or its durability: the
    /// steps of writing, persisting and pruning a generation.
    pub const MUTATING: &'static [IoOp] = &[
        IoOp::Create,
        IoOp::Write,
        IoOp::SyncFile,
        IoOp::SyncData,
        IoOp::Truncate,
        IoOp::Rename,
        IoOp::SyncDir,
        IoOp::Remove,
    ];
}

/// When and how a [`FaultyIo`] fails.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    /// The operations that are counted and may fail; empty means all.
    pub ops: Vec<IoOp>,
    /// How many counted operations succeed before the first failure.
    pub after: u64,
    /// Fail every counted operation from the first failure on, until
    /// [`Faults::heal`]; otherwise fail just one.
    pub sticky: bool,
    /// The kind of the injected error.
    pub kind: io::ErrorKind,
}

impl FaultPlan {
    /// Fails the counted operation number `after` (0-based) once, with an
    /// I/O error.
    pub fn once(ops: &[IoOp], after: u64) -> FaultPlan {
        FaultPlan {
            ops: ops.to_vec(),
            after,
            sticky: false,
            kind: io::ErrorKind::Other,
        }
    }

    /// Fails every counted operation from number `after` (0-based) on, as a
    /// full disk does, until healed.
    pub fn disk_full(ops: &[IoOp], after: u64) -> FaultPlan {
        FaultPlan {
            ops: ops.to_vec(),
            after,
            sticky: true,
            kind: io::ErrorKind::StorageFull,
        }
    }

    fn counts(&self, op: IoOp) -> bool {
        self.ops.is_empty() || self.ops.contains(&op)
    }
}

#[derive(Debug, Default)]
struct FaultState {
    plan: Option<FaultPlan>,
    counted: u64,
    injected: u64,
    log: Vec<IoOp>,
}

/// The control of a [`FaultyIo`], kept by the test while the store owns the
/// I/O layer.
#[derive(Debug, Clone, Default)]
pub struct Faults(Arc<Mutex<FaultState>>);

impl Faults {
    fn state(&self) -> MutexGuard<'_, FaultState> {
        // A panic while holding the lock leaves plain counters behind; they
        // are still meaningful.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts failing per `plan`, counting from now.
    pub fn arm(&self, plan: FaultPlan) {
        let mut s = self.state();
        s.plan = Some(plan);
        s.counted = 0;
    }

    /// Stops failing.
    pub fn heal(&self) {
        self.state().plan = None;
    }

    /// How many failures were injected since the I/O layer was made.
    pub fn injected(&self) -> u64 {
        self.state().injected
    }

    /// Every operation attempted so far, in order.
    pub fn log(&self) -> Vec<IoOp> {
        self.state().log.clone()
    }

    /// Records `op` and decides whether it fails.
    fn check(&self, op: IoOp) -> io::Result<()> {
        let mut s = self.state();
        s.log.push(op);
        let Some(plan) = &s.plan else { return Ok(()) };
        if !plan.counts(op) {
            return Ok(());
        }
        let fail = s.counted >= plan.after && (plan.sticky || s.counted == plan.after);
        let kind = plan.kind;
        s.counted += 1;
        if fail {
            s.injected += 1;
            return Err(io::Error::new(kind, format!("injected fault in {op:?}")));
        }
        Ok(())
    }
}

/// A [`StoreIo`] that passes every operation to another one unless its
/// [`Faults`] say the operation fails. A failing write first writes half of
/// its bytes, as a write interrupted by a full disk does.
pub struct FaultyIo {
    inner: Box<dyn StoreIo>,
    faults: Faults,
}

impl FaultyIo {
    /// Wraps `inner`; the returned [`Faults`] controls it.
    pub fn new(inner: Box<dyn StoreIo>) -> (FaultyIo, Faults) {
        let faults = Faults::default();
        (
            FaultyIo {
                inner,
                faults: faults.clone(),
            },
            faults,
        )
    }
}

impl StoreIo for FaultyIo {
    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()> {
        self.faults.check(IoOp::CreateDir)?;
        self.inner.create_dir_all(dir)
    }

    fn lock(&mut self, path: &Path) -> io::Result<LockAttempt> {
        self.faults.check(IoOp::Lock)?;
        self.inner.lock(path)
    }

    fn list(&mut self, dir: &Path) -> io::Result<Vec<OsString>> {
        self.faults.check(IoOp::List)?;
        self.inner.list(dir)
    }

    fn create_new(&mut self, path: &Path) -> io::Result<Box<dyn StoreFile>> {
        self.faults.check(IoOp::Create)?;
        let inner = self.inner.create_new(path)?;
        Ok(Box::new(FaultyFile {
            inner,
            faults: self.faults.clone(),
        }))
    }

    fn open_read(&mut self, path: &Path) -> io::Result<ReadFile> {
        self.faults.check(IoOp::Open)?;
        self.inner.open_read(path)
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        self.faults.check(IoOp::Rename)?;
        self.inner.rename(from, to)
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        self.faults.check(IoOp::SyncDir)?;
        self.inner.sync_dir(dir)
    }

    fn remove(&mut self, path: &Path) -> io::Result<()> {
        self.faults.check(IoOp::Remove)?;
        self.inner.remove(path)
    }

    fn fork(&self) -> Box<dyn StoreIo> {
        Box::new(FaultyIo {
            inner: self.inner.fork(),
            faults: self.faults.clone(),
        })
    }
}

struct FaultyFile {
    inner: Box<dyn StoreFile>,
    faults: Faults,
}

impl StoreFile for FaultyFile {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Err(e) = self.faults.check(IoOp::Write) {
            // A torn write: part of the bytes land before the error.
            let _ = self.inner.write_all(&bytes[..bytes.len() / 2]);
            return Err(e);
        }
        self.inner.write_all(bytes)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.faults.check(IoOp::SyncFile)?;
        self.inner.sync()
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.faults.check(IoOp::SyncData)?;
        self.inner.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.faults.check(IoOp::Truncate)?;
        self.inner.truncate(len)
    }

    fn try_clone(&self) -> io::Result<Box<dyn StoreFile>> {
        Ok(Box::new(FaultyFile {
            inner: self.inner.try_clone()?,
            faults: self.faults.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_fails_exactly_the_counted_operation() {
        let f = Faults::default();
        f.arm(FaultPlan::once(&[IoOp::Write], 1));
        assert!(f.check(IoOp::Rename).is_ok());
        assert!(f.check(IoOp::Write).is_ok());
        assert!(f.check(IoOp::Write).is_err());
        assert!(f.check(IoOp::Write).is_ok());
        assert_eq!(f.injected(), 1);
        assert_eq!(f.log().len(), 4);
    }

    #[test]
    fn disk_full_fails_until_healed() {
        let f = Faults::default();
        f.arm(FaultPlan::disk_full(&[], 0));
        assert!(f.check(IoOp::Create).is_err());
        let e = f.check(IoOp::Write).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        f.heal();
        assert!(f.check(IoOp::Write).is_ok());
        assert_eq!(f.injected(), 2);
    }
}
