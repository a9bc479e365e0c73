//! Test fixtures over real components. Every fixture picks its own free loopback ports, uses
//! names with a unique prefix, and removes what it created on drop (also when a test panics).

pub mod bench;
pub mod etcd;
#[cfg(feature = "kube")]
pub mod kube;
pub mod netns;
pub mod nginx;
pub mod notify;
pub mod ovs;
pub mod registry;

/// Whether a test that needs `what` can run. Without it, the test is skipped with a message,
/// unless `CELLPLANE_REQUIRE_PRIV=1` (CI sets it): then a missing prerequisite fails the test.
pub fn prerequisite(what: &str, available: bool) -> bool {
    if available {
        return true;
    }
    if std::env::var("CELLPLANE_REQUIRE_PRIV").as_deref() == Ok("1") {
        panic!("prerequisite missing: {what} (CELLPLANE_REQUIRE_PRIV=1 makes this a failure)");
    }
    eprintln!("SKIPPED: prerequisite missing: {what}");
    false
}

/// Is `name` an executable on PATH?
pub fn have_binary(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

/// A short random string for unique names (netns, bridges, key prefixes).
pub fn unique(prefix: &str) -> String {
    use rand::Rng;
    let n: u32 = rand::rng().random();
    format!("{prefix}{n:08x}")
}

/// A free TCP port on 127.0.0.1 (bound and released; callers retry if they lose a race).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}
