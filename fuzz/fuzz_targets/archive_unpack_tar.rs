//! `unpack_tar_gz` on a tar stream that the target gzips in-process, so every mutation lands
//! in the tar headers and entries rather than in a gzip checksum; same invariant as
//! `archive_unpack`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gilgal_fuzz::archive::unpack_and_check(&gilgal_fuzz::archive::gzip(data));
});
