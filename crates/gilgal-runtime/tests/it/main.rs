//! Integration tests of the process runtime with real Python processes, real sockets, real
//! signals and (where the machine allows) real cgroups and Unix users.

mod common;
mod health;
mod isolation;
mod lifecycle;
mod recovery;
