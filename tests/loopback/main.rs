//! Loopback integration tests.
