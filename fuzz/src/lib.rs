//! Shared checks for Gilgal's fuzz targets (`fuzz_targets/*.rs`): the invariants each target
//! asserts after feeding its input to the library, kept here so two targets over the same code
//! (the archive unpacker, reached through gzip or with the tar bytes wrapped in-process) check
//! exactly the same thing.

pub mod archive;
