//! Integration tests of gilgal-secrets through its public API: real key files in temporary
//! directories, real encryption, crashes simulated by stopping a rotation half-way.

mod crypto;
mod key_file;
mod redaction;
mod rotation;
