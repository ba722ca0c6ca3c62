//! turnpike-server
pub mod udp_batch;
