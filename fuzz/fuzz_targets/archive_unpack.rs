//! `unpack_tar_gz` on raw bytes, exactly as an upload reaches it (gzip, then tar): nothing may
//! be written outside the destination, and a successful unpack leaves no escaping symlink.
//! Most mutations break the gzip stream; `archive_unpack_tar` reaches the tar parser directly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gilgal_fuzz::archive::unpack_and_check(data);
});
