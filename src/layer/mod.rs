//! A layer blob → a verified, normalised changeset in the CAS (being written).

pub mod descriptor;
pub use descriptor::LayerDescriptor;
