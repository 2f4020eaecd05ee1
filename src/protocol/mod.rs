//! The wire contract shared by relay, agent and client: what a name is, what a
//! target is, and every limit and timeout with the reason for its value.
//!
//! Nothing here imports from the rest of the crate.

pub mod cidr;
pub mod device_info;
pub mod gateway;
pub mod limits;
pub mod names;
pub mod target;
pub mod token;

pub use cidr::Cidr;
pub use names::{Name, NameError, Role};
pub use target::{AllowList, Target};
