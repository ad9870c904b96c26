//! Checking one whole record held in memory, as a reader of the store
//! checks it (STORE.md, "Reading a record"): its header, every chunk
//! record's pages against the chunk's hash, the meta blob against its
//! hash, the trailer's counts and the skeleton hash. For a copy of a
//! record made outside the store (a replica's piece), which must be known
//! good before anything names it.

use super::{
    CHUNK_TAG, Defect, END_TAG, HASH_LEN, Header, META_TAG, chunk, chunk_len, get, header, meta, page_len,
    pages_of, payload_len, record_hash, trailer,
};

fn short(field: &str, at: usize, need: usize, have: usize) -> Defect {
    Defect::new(field, at as u64, format!("{need} more bytes"), format!("{have}"))
}

/// Checks that `b` is exactly one whole, intact record; returns its header.
pub fn check_record(b: &[u8]) -> Result<Header, Defect> {
    let Some(head) = b.get(..header::LEN) else {
        return Err(short("header", 0, header::LEN, b.len()));
    };
    let header = Header::decode(head.try_into().expect("header::LEN bytes"))?;
    let mut skeleton = blake3::Hasher::new();
    skeleton.update(head);
    let mut at = header::LEN;
    let mut chunks = 0u64;
    loop {
        let Some(tag) = b.get(at..at + 8) else {
            return Err(short("record tag", at, 8, b.len() - at));
        };
        if tag == CHUNK_TAG {
            let Some(descriptor) = b.get(at..at + chunk::DESCRIPTOR) else {
                return Err(short("chunk descriptor", at, chunk::DESCRIPTOR, b.len() - at));
            };
            let index = get(descriptor, chunk::INDEX);
            let pages = get(descriptor, chunk::PAGES);
            let Some(len) = chunk_len(header.region_len, index) else {
                return Err(Defect::new(
                    "chunk index",
                    (at + chunk::INDEX) as u64,
                    "a chunk of the region",
                    index,
                ));
            };
            if pages == 0 || pages & !super::all_pages(len) != 0 {
                return Err(Defect::new(
                    "chunk pages",
                    (at + chunk::PAGES) as u64,
                    "pages of the chunk",
                    format!("{pages:#x}"),
                ));
            }
            let start = at + chunk::DESCRIPTOR;
            let n = payload_len(len, pages) as usize;
            let Some(payload) = b.get(start..start + n) else {
                return Err(short("chunk payload", start, n, b.len() - start));
            };
            let mut offset = 0;
            let hashes: Vec<blake3::Hash> = pages_of(pages)
                .map(|p| {
                    let plen = page_len(len, p) as usize;
                    let h = blake3::hash(&payload[offset..offset + plen]);
                    offset += plen;
                    h
                })
                .collect();
            if record_hash(&hashes).as_bytes() != &descriptor[chunk::HASH..chunk::HASH + HASH_LEN] {
                return Err(Defect::new(
                    "chunk hash",
                    (at + chunk::HASH) as u64,
                    "the hash of its pages",
                    "another",
                ));
            }
            skeleton.update(descriptor);
            chunks += 1;
            at = start + n;
        } else if tag == META_TAG {
            let Some(descriptor) = b.get(at..at + meta::DESCRIPTOR) else {
                return Err(short("meta descriptor", at, meta::DESCRIPTOR, b.len() - at));
            };
            let len = usize::try_from(get(descriptor, meta::LEN)).unwrap_or(usize::MAX);
            let start = at + meta::DESCRIPTOR;
            let Some(blob) = b.get(start..start.saturating_add(len)) else {
                return Err(short("meta blob", start, len, b.len() - start));
            };
            if blake3::hash(blob).as_bytes() != &descriptor[meta::HASH..meta::HASH + HASH_LEN] {
                return Err(Defect::new(
                    "meta hash",
                    (at + meta::HASH) as u64,
                    "the hash of the blob",
                    "another",
                ));
            }
            skeleton.update(descriptor);
            at = start + len;
            break;
        } else {
            return Err(Defect::new(
                "record tag",
                at as u64,
                "gen:chnk or gen:meta",
                format!("{tag:?}"),
            ));
        }
    }
    let Some(end) = b.get(at..) else {
        return Err(short("trailer", at, trailer::LEN, 0));
    };
    if end.len() != trailer::LEN {
        return Err(Defect::new(
            "trailer",
            at as u64,
            format!("{} bytes to the end", trailer::LEN),
            end.len(),
        ));
    }
    if end[..8] != END_TAG {
        return Err(Defect::new(
            "trailer tag",
            at as u64,
            "gen:end",
            format!("{:?}", &end[..8]),
        ));
    }
    if get(end, trailer::CHUNK_COUNT) != chunks {
        return Err(Defect::new(
            "chunk_count",
            (at + trailer::CHUNK_COUNT) as u64,
            chunks,
            get(end, trailer::CHUNK_COUNT),
        ));
    }
    if get(end, trailer::RECORD_LEN) != b.len() as u64 {
        return Err(Defect::new(
            "record_len",
            (at + trailer::RECORD_LEN) as u64,
            b.len(),
            get(end, trailer::RECORD_LEN),
        ));
    }
    skeleton.update(&end[..trailer::HASH]);
    if skeleton.finalize().as_bytes() != &end[trailer::HASH..] {
        return Err(Defect::new(
            "skeleton_hash",
            (at + trailer::HASH) as u64,
            "the hash of the skeleton",
            "another",
        ));
    }
    Ok(header)
}
