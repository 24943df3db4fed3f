//! Reading the small files lb.toml names (error pages, the admin token file): whole, but
//! never more than a bound, with the file's name in every problem. A leaf: imports nothing
//! from the crate.

use std::io::Read;
use std::path::Path;

/// The bytes of the file at `path`, at most `max` of them: a larger file is refused
/// without being read whole. Problems start with the file's name.
pub fn read_at_most(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    let mut bytes = Vec::new();
    // One byte more than allowed tells "too large".
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{shown}: cannot read: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(format!("{shown} is larger than {} KiB", max / 1024));
    }
    Ok(bytes)
}
