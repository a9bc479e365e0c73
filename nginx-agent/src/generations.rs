//! The agent's directory: `generations/gNNNNNNNN/` (one rendered tree each, never changed
//! after it is written), `current` (a symlink naming the live one, swapped with one rename),
//! and `upstreams.json` (the snapshot).

use std::path::{Path, PathBuf};

use crate::error::AgentError;
use crate::render::Tree;

#[derive(Debug, Clone)]
pub struct Generations {
    dir: PathBuf,
}

impl Generations {
    pub fn new(dir: &Path) -> Generations {
        Generations {
            dir: dir.to_path_buf(),
        }
    }

    pub fn ensure_dirs(&self) -> Result<(), AgentError> {
        let g = self.dir.join("generations");
        std::fs::create_dir_all(&g).map_err(|e| AgentError::io(&g, e))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path nginx is started with: `-c {this}`.
    pub fn live_conf(&self) -> PathBuf {
        self.dir.join("current/nginx.conf")
    }

    pub fn snapshot_path(&self) -> PathBuf {
        self.dir.join("upstreams.json")
    }

    pub fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join("generations").join(name)
    }

    /// Name of the live generation, if any.
    pub fn current(&self) -> Option<String> {
        let target = std::fs::read_link(self.dir.join("current")).ok()?;
        target.file_name()?.to_str().map(str::to_string)
    }

    /// A fresh generation name, after every one on disk.
    pub fn next_name(&self) -> Result<String, AgentError> {
        let g = self.dir.join("generations");
        let mut max = 0u64;
        for e in std::fs::read_dir(&g).map_err(|e| AgentError::io(&g, e))? {
            let e = e.map_err(|e| AgentError::io(&g, e))?;
            if let Some(n) = e
                .file_name()
                .to_str()
                .and_then(|s| s.strip_prefix('g'))
                .and_then(|s| s.parse::<u64>().ok())
            {
                max = max.max(n);
            }
        }
        Ok(format!("g{:08}", max + 1))
    }

    /// Reads a generation back (files the renderer writes: `*.conf`, `lua/*.lua`).
    pub fn read(&self, name: &str) -> Result<Tree, AgentError> {
        let root = self.path_of(name);
        let mut tree = Tree::new();
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).map_err(|e| AgentError::io(&d, e))? {
                let e = e.map_err(|e| AgentError::io(&d, e))?;
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let text = std::fs::read_to_string(&p).map_err(|e| AgentError::io(&p, e))?;
                    let rel = p.strip_prefix(&root).unwrap_or(&p).to_path_buf();
                    tree.insert(rel, text);
                }
            }
        }
        Ok(tree)
    }

    /// Writes `tree` as generation `name` (the staging directory `nginx -t` checks).
    pub fn write(&self, name: &str, tree: &Tree) -> Result<PathBuf, AgentError> {
        let root = self.path_of(name);
        if root.exists() {
            std::fs::remove_dir_all(&root).map_err(|e| AgentError::io(&root, e))?;
        }
        for (rel, text) in tree {
            let p = root.join(rel);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(|e| AgentError::io(parent, e))?;
            }
            std::fs::write(&p, text).map_err(|e| AgentError::io(&p, e))?;
        }
        Ok(root)
    }

    /// Points `current` at `name` with one rename (atomic for every reader).
    pub fn swap(&self, name: &str) -> Result<(), AgentError> {
        let tmp = self.dir.join(format!(".current-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("generations").join(name), &tmp)
            .map_err(|e| AgentError::io(&tmp, e))?;
        let cur = self.dir.join("current");
        std::fs::rename(&tmp, &cur).map_err(|e| AgentError::io(&cur, e))
    }

    /// Removes a generation; `Ok` when it is already gone.
    pub fn discard(&self, name: &str) -> Result<(), AgentError> {
        let p = self.path_of(name);
        match std::fs::remove_dir_all(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(AgentError::io(&p, e)),
            _ => Ok(()),
        }
    }

    /// Keeps the live generation and the `keep` newest others; removes the rest.
    pub fn prune(&self, keep: usize) -> Result<(), AgentError> {
        let g = self.dir.join("generations");
        let live = self.current();
        let mut names: Vec<String> = std::fs::read_dir(&g)
            .map_err(|e| AgentError::io(&g, e))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| Some(n) != live.as_ref())
            .collect();
        names.sort();
        let drop_n = names.len().saturating_sub(keep);
        for n in &names[..drop_n] {
            self.discard(n)?;
        }
        Ok(())
    }

    /// Writes `bytes` to `path` through a temporary file and a rename.
    pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AgentError> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).map_err(|e| AgentError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| AgentError::io(path, e))
    }
}
