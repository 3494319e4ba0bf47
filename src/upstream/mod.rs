//! Everything that talks to the outpost: the keepalive pool, the passthrough, the breaker.

pub mod breaker;
pub mod client;
pub mod passthrough;
pub mod pool;
pub mod wire;
