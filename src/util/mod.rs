//! Small building blocks shared by several modules.

pub(crate) mod bounded_cache;
