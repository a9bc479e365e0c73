//! Pure code shared by every cellplane component: IPv4 pool and block math, the etcd key
//! schema, the JSON records stored under it, and validation. No I/O, no async.

pub mod error;
pub mod keys;
pub mod pool;
pub mod records;
pub mod validation;

pub use error::{CoreError, Result};
pub use keys::Keys;
pub use pool::{BlockRef, Pool, PoolSpec, PoolState};
pub use records::{Allocation, BlockRecord, HandleRecord, PodRef};
