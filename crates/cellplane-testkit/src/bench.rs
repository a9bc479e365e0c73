//! What every bench shares: one percentile definition and one place for the JSON reports
//! (`target/bench/NAME.json`, or under `$CARGO_TARGET_DIR`).

use std::path::PathBuf;

/// The `p`-quantile (0 < p ≤ 1) of `samples` by nearest rank: the smallest sample with at
/// least `p` of all samples at or below it. NaN when there are none.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// `target/bench` (created).
pub fn bench_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("bench");
    std::fs::create_dir_all(&dir).expect("create target/bench");
    dir
}

/// Writes `report` to `target/bench/{name}.json`, prints it, and returns the path.
pub fn write_report(name: &str, report: &serde_json::Value) -> PathBuf {
    let path = bench_dir().join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(report).expect("a JSON value serialises");
    std::fs::write(&path, &text).expect("write the bench report");
    println!("{text}");
    println!("wrote {}", path.display());
    path
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[7.0], 0.5), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
