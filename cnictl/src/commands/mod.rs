pub mod blocks;
pub mod check;
pub mod gc;
pub mod node;
pub mod pool;
pub mod release;
pub mod usage;
