//! One-off jobs of the command line, beside running the service: `expand` (expand
//! images into the CAS and print what came out) and `check-config`.

pub mod expand;
pub mod materialize;
