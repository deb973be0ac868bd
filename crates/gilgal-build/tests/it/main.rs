//! Integration tests of gilgal-build, with real tarballs, real toolchains (python3, npm, cargo)
//! and real processes.

mod archive;
mod builds;
mod config;
mod detect;
mod git;
mod pack;
mod procfile;
mod support;
