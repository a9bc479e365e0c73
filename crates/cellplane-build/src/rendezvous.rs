//! Rendezvous (highest random weight) hashing of repositories over agents: every agent gets a
//! score from hash(repository, agent) and the highest wins. The same repository goes to the same
//! agent while it lives, and when an agent joins or leaves only the repositories whose winner
//! changes move (about 1/n of them), so dependency caches stay warm.

/// 64-bit FNV-1a over `parts`, each followed by a 0 byte, then a final avalanche (splitmix64),
/// so that scores are stable across processes, versions and platforms.
fn score(repo: &str, agent: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [repo.as_bytes(), agent.as_bytes()] {
        for &b in part.iter().chain(std::iter::once(&0u8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The repository's key for hashing: trailing `/` and `.git` do not make another repository.
pub fn normalize_repo(repo: &str) -> &str {
    let r = repo.trim_end_matches('/');
    r.strip_suffix(".git").unwrap_or(r)
}

/// `agents` ordered by preference for `repo`, best first (ties broken by name).
pub fn rank<'a>(repo: &str, agents: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let key = normalize_repo(repo);
    let mut scored: Vec<(u64, &str)> = agents.into_iter().map(|a| (score(key, a), a)).collect();
    scored.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(y.1)));
    scored.into_iter().map(|(_, a)| a).collect()
}

/// The first agent in `repo`'s ranking with room (`load < capacity`); when every agent is
/// full, the top-ranked one (the task waits in its queue). `None` without agents.
pub fn choose<'a>(repo: &str, agents: &[(&'a str, u32, u32)]) -> Option<&'a str> {
    let ranked = rank(repo, agents.iter().map(|a| a.0));
    let room = |name: &str| {
        agents
            .iter()
            .find(|a| a.0 == name)
            .is_some_and(|&(_, capacity, load)| load < capacity)
    };
    ranked
        .iter()
        .copied()
        .find(|a| room(a))
        .or_else(|| ranked.first().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_spread() {
        let agents = ["a1", "a2", "a3", "a4"];
        let mut counts = std::collections::HashMap::new();
        for i in 0..4000 {
            let repo = format!("https://git.example.com/team/app{i}.git");
            let first = rank(&repo, agents)[0];
            assert_eq!(first, rank(&repo, agents)[0]);
            *counts.entry(first).or_insert(0) += 1;
        }
        for a in agents {
            let n = counts[a];
            assert!((800..1200).contains(&n), "{a} got {n} of 4000");
        }
    }

    #[test]
    fn only_the_lost_agents_repositories_move() {
        let all = ["a1", "a2", "a3", "a4"];
        let without = ["a1", "a2", "a4"];
        for i in 0..1000 {
            let repo = format!("ssh://git@h/r{i}");
            let before = rank(&repo, all)[0];
            let after = rank(&repo, without)[0];
            if before != "a3" {
                assert_eq!(before, after, "{repo} moved although its agent stayed");
            }
        }
    }

    #[test]
    fn same_repository_spelled_differently() {
        let agents = ["a1", "a2", "a3"];
        assert_eq!(
            rank("https://h/team/app.git", agents),
            rank("https://h/team/app/", agents)
        );
    }

    #[test]
    fn falls_back_when_full() {
        let repo = "file:///srv/app";
        let top = rank(repo, ["a1", "a2"])[0];
        let other = if top == "a1" { "a2" } else { "a1" };
        assert_eq!(choose(repo, &[("a1", 2, 0), ("a2", 2, 0)]), Some(top));
        let full = [(top, 1, 1), (other, 1, 0)];
        assert_eq!(choose(repo, &full), Some(other));
        let all_full = [(top, 1, 3), (other, 1, 1)];
        assert_eq!(choose(repo, &all_full), Some(top));
        assert_eq!(choose(repo, &[]), None);
    }
}
