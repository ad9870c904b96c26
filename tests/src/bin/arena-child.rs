//! A test program for large regions: fills part of the arena with data,
//! then commits small writes until killed.
//!
//! `arena-child --fill BYTES [--rate PER_SECOND]`
//!
//! On a region that holds no unit, it writes `BYTES` of non-zero data into
//! the arena, a MiB a commit (each unit says where its write went), then
//! prints `filled`. On a restored region it skips the fill and prints
//! `recovered <units>`. Then it commits 64-byte units, each describing a
//! fresh 4 KiB write at the next arena offset, `PER_SECOND` times a second
//! (1000 by default), printing `committed <n>` after every thousandth.

use std::io::Write;
use std::time::{Duration, Instant};

use shm_snapshot::{Client, Config, Region};

/// Bytes written into the arena by each commit of the fill.
const FILL_PIECE: usize = 1 << 20;
/// Bytes written by each commit after it.
const WRITE: usize = 4096;

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .expect("stdout");
}

fn main() {
    let mut fill = 0usize;
    let mut rate = 1000u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--fill" => fill = args.next().and_then(|v| v.parse().ok()).expect("--fill BYTES"),
            "--rate" => {
                rate = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--rate PER_SECOND")
            }
            other => panic!("unknown argument {other}"),
        }
    }
    // SAFETY: the only place this process takes the handed-over region.
    let region = unsafe { Region::from_env() }.expect("the region handed over");
    let mut client = Client::open(region, &Config::default()).expect("opening the region");
    let recovered = client.recover().expect("recovering").len();
    let arena = client.arena().len();
    assert!(
        fill <= arena,
        "--fill {fill} is larger than the arena ({arena} bytes)"
    );
    let mut unit = [0u8; 64];
    let mut commit = |client: &mut Client, n: u64, at: usize, data: &[u8]| {
        unit[..8].copy_from_slice(&n.to_le_bytes());
        unit[8..16].copy_from_slice(&(at as u64).to_le_bytes());
        unit[16..24].copy_from_slice(&(data.len() as u64).to_le_bytes());
        client
            .commit_with(&unit, |tx| tx.arena().write(at, data))
            .unwrap_or_else(|e| panic!("commit {n}: {e}"));
    };
    let mut n = 0u64;
    if recovered == 0 {
        let mut piece = vec![0u8; FILL_PIECE];
        for (k, at) in (0..fill).step_by(FILL_PIECE).enumerate() {
            let len = FILL_PIECE.min(fill - at);
            piece[..len].fill((k % 255) as u8 + 1);
            commit(&mut client, n, at, &piece[..len]);
            n += 1;
        }
        say("filled");
    } else {
        say(&format!("recovered {recovered}"));
    }
    let period = Duration::from_secs(1) / rate.max(1) as u32;
    let start = Instant::now();
    let mut data = [0u8; WRITE];
    for k in 0u64.. {
        data.fill((k % 251) as u8 + 1);
        let at = (k as usize * WRITE) % (arena - WRITE);
        commit(&mut client, n, at, &data);
        n += 1;
        if (k + 1) % 1000 == 0 {
            say(&format!("committed {}", k + 1));
        }
        if let Some(nap) = (start + period * (k + 1) as u32).checked_duration_since(Instant::now()) {
            std::thread::sleep(nap);
        }
    }
}
