//! Integration tests of gilgal-build (filled in below).
#[test]
fn placeholder() {}
