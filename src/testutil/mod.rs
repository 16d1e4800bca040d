//! Test support: in-process servers used by unit and integration tests.
