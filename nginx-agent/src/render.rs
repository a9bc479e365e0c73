//! Renders the whole nginx tree of one generation from the typed domain configs. Pure: the
//! output is a map of relative path -> text, written to disk by [`crate::generations`].
//! Every user value was validated by `cellplane_slb` to be safe inside `"..."`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use cellplane_slb::{DomainConfig, Header, Location, MatchKind};

use crate::config::NginxSettings;

/// The Lua module shipped in every tree.
pub const LUA_MODULE: &str = include_str!("lua/cellplane.lua");

/// Relative path -> file text.
pub type Tree = BTreeMap<PathBuf, String>;

/// Where the rendered tree points outside itself.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    pub settings: NginxSettings,
    /// The upstream snapshot that seeds the shared dict when nginx (re)loads.
    pub snapshot: PathBuf,
}

/// Renders the tree to be placed at `gen_dir` (paths inside the tree are absolute, so the same
/// configs rendered for another directory differ only in those paths). `generation` is served
/// by the admin server so that the agent can see when a reload took effect.
pub fn render(
    opts: &RenderOptions,
    gen_dir: &Path,
    generation: &str,
    domains: &BTreeMap<String, DomainConfig>,
) -> Tree {
    let mut tree = Tree::new();
    tree.insert(PathBuf::from("lua/cellplane.lua"), LUA_MODULE.to_string());
    tree.insert(
        PathBuf::from("nginx.conf"),
        main_conf(opts, gen_dir, generation, domains),
    );
    for (name, cfg) in domains {
        tree.insert(
            PathBuf::from(format!("domains/{name}.conf")),
            domain_conf(&opts.settings, name, cfg),
        );
    }
    tree
}

fn main_conf(
    opts: &RenderOptions,
    gen_dir: &Path,
    generation: &str,
    domains: &BTreeMap<String, DomainConfig>,
) -> String {
    let s = &opts.settings;
    let g = gen_dir.display();
    let t = s.temp_dir.display();
    let mut o = String::new();
    o.push_str(
        "# Rendered by cellplane nginx-agent. Do not edit: the next change overwrites it.\n",
    );
    for m in &s.modules {
        let _ = writeln!(o, "load_module {};", m.display());
    }
    let _ = writeln!(o, "worker_processes {};", s.worker_processes);
    let _ = writeln!(o, "pid {};", s.pid_file.display());
    let _ = writeln!(o, "error_log {} warn;", s.error_log.display());
    let _ = writeln!(
        o,
        "worker_shutdown_timeout {}s;",
        s.worker_shutdown_timeout_secs
    );
    let _ = writeln!(
        o,
        "events {{\n    worker_connections {};\n}}",
        s.worker_connections
    );
    o.push_str("http {\n");
    let _ = writeln!(o, "    access_log {};", s.access_log);
    for (d, sub) in [
        ("client_body_temp_path", "body"),
        ("proxy_temp_path", "proxy"),
        ("fastcgi_temp_path", "fastcgi"),
        ("uwsgi_temp_path", "uwsgi"),
        ("scgi_temp_path", "scgi"),
    ] {
        let _ = writeln!(o, "    {d} {t}/{sub};");
    }
    o.push_str("    server_tokens off;\n");
    o.push_str("    server_names_hash_bucket_size 128;\n");
    o.push_str("    server_names_hash_max_size 65536;\n");
    let _ = writeln!(o, "    keepalive_requests {};", s.keepalive_requests);
    let _ = writeln!(o, "    lua_package_path \"{g}/lua/?.lua;;\";");
    let _ = writeln!(o, "    lua_package_cpath \"{}\";", s.lua_cpath);
    let _ = writeln!(
        o,
        "    lua_shared_dict cellplane_upstreams {};",
        s.shared_dict_size
    );
    let _ = writeln!(
        o,
        "    init_by_lua_block {{ require(\"cellplane\").seed(\"{}\") }}",
        opts.snapshot.display()
    );
    o.push_str("    map $http_upgrade $cellplane_connection_upgrade {\n        default upgrade;\n        '' close;\n    }\n");
    o.push_str("    upstream cellplane_backend {\n");
    o.push_str("        server 0.0.0.1:1; # placeholder: the Lua balancer picks every peer\n");
    o.push_str("        balancer_by_lua_block { require(\"cellplane\").balance() }\n");
    let _ = writeln!(o, "        keepalive {};", s.upstream_keepalive);
    o.push_str("    }\n");
    // Unknown host names on a plain port get a 404 instead of the first domain.
    let plain_ports: BTreeSet<u16> = domains
        .values()
        .flat_map(|d| d.listen.iter().filter(|l| !l.tls).map(|l| l.port))
        .collect();
    for port in plain_ports {
        let _ = writeln!(
            o,
            "    server {{\n        listen {}:{port} default_server;\n        server_name _;\n        return 404;\n    }}",
            s.listen_address
        );
    }
    let _ = writeln!(o, "    include {g}/domains/*.conf;");
    // The admin server: loopback only, never a user domain.
    let _ = writeln!(o, "    server {{\n        listen {};", s.admin_listen);
    o.push_str("        allow 127.0.0.1;\n        allow ::1;\n        deny all;\n");
    o.push_str("        location = /cellplane/upstreams {\n            client_max_body_size 64m;\n            client_body_buffer_size 64m;\n            content_by_lua_block { require(\"cellplane\").admin() }\n        }\n");
    let _ = writeln!(
        o,
        "        location = /cellplane/generation {{\n            default_type text/plain;\n            return 200 \"{generation}\";\n        }}"
    );
    o.push_str("        location / {\n            return 404;\n        }\n    }\n}\n");
    o
}

fn ms(v: u64) -> String {
    format!("{v}ms")
}

fn push_headers(o: &mut String, indent: &str, directive: &str, hs: &[&Header], suffix: &str) {
    for h in hs {
        let _ = writeln!(o, "{indent}{directive} {} \"{}\"{suffix};", h.name, h.value);
    }
}

fn domain_conf(s: &NginxSettings, name: &str, c: &DomainConfig) -> String {
    let mut o = String::new();
    o.push_str("server {\n");
    for l in &c.listen {
        let mut flags = String::new();
        if l.tls {
            flags.push_str(" ssl");
        }
        if l.http2 {
            flags.push_str(" http2");
        }
        let _ = writeln!(o, "    listen {}:{}{flags};", s.listen_address, l.port);
    }
    let mut names = vec![name.to_string()];
    names.extend(c.aliases.iter().cloned());
    let _ = writeln!(o, "    server_name {};", names.join(" "));
    let _ = writeln!(o, "    set $cellplane_pool \"{name}\";");
    if let Some(t) = &c.tls {
        let _ = writeln!(o, "    ssl_certificate \"{}\";", t.certificate);
        let _ = writeln!(o, "    ssl_certificate_key \"{}\";", t.key);
    }
    let _ = writeln!(o, "    client_max_body_size {};", c.client_max_body_size);
    let _ = writeln!(
        o,
        "    client_header_timeout {};",
        ms(c.timeouts.client_header_ms)
    );
    let _ = writeln!(
        o,
        "    client_body_timeout {};",
        ms(c.timeouts.client_body_ms)
    );
    let _ = writeln!(o, "    keepalive_timeout {};", ms(c.timeouts.keepalive_ms));
    let _ = writeln!(o, "    send_timeout {};", ms(c.timeouts.send_ms));
    for l in &c.locations {
        location(&mut o, c, l);
    }
    o.push_str("}\n");
    o
}

fn location(o: &mut String, c: &DomainConfig, l: &Location) {
    let m = match l.match_kind {
        MatchKind::Prefix => "",
        MatchKind::Exact => "= ",
    };
    let _ = writeln!(o, "    location {m}\"{}\" {{", l.path);
    let i = "        ";
    let p = &l.proxy;
    let _ = writeln!(o, "{i}set $cellplane_tries {};", p.tries);
    let _ = writeln!(
        o,
        "{i}access_by_lua_block {{ require(\"cellplane\").access() }}"
    );
    let _ = writeln!(o, "{i}proxy_pass http://cellplane_backend;");
    let _ = writeln!(o, "{i}proxy_http_version 1.1;");
    let _ = writeln!(o, "{i}proxy_connect_timeout {};", ms(p.connect_timeout_ms));
    let _ = writeln!(o, "{i}proxy_read_timeout {};", ms(p.read_timeout_ms));
    let _ = writeln!(o, "{i}proxy_send_timeout {};", ms(p.send_timeout_ms));
    let _ = writeln!(
        o,
        "{i}proxy_buffering {};",
        if p.buffering { "on" } else { "off" }
    );
    let _ = writeln!(o, "{i}proxy_next_upstream error timeout;");
    let _ = writeln!(o, "{i}proxy_next_upstream_tries {};", p.tries);
    // proxy_set_header at this level replaces every inherited one: set them all here.
    let user_sets = |n: &str| {
        l.request_headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case(n))
    };
    if !user_sets("Host") {
        let _ = writeln!(o, "{i}proxy_set_header Host $host;");
    }
    if p.websocket {
        let _ = writeln!(o, "{i}proxy_set_header Upgrade $http_upgrade;");
        let _ = writeln!(
            o,
            "{i}proxy_set_header Connection $cellplane_connection_upgrade;"
        );
    } else {
        let _ = writeln!(o, "{i}proxy_set_header Connection \"\";");
    }
    if p.forward_client_ip {
        for (n, v) in [
            ("X-Real-IP", "$remote_addr"),
            ("X-Forwarded-For", "$proxy_add_x_forwarded_for"),
            ("X-Forwarded-Proto", "$scheme"),
        ] {
            if !user_sets(n) {
                let _ = writeln!(o, "{i}proxy_set_header {n} {v};");
            }
        }
    }
    let req: Vec<&Header> = l.request_headers.iter().collect();
    push_headers(o, i, "proxy_set_header", &req, "");
    // add_header at this level replaces the server's: render both here.
    let resp: Vec<&Header> = c
        .response_headers
        .iter()
        .filter(|h| {
            !l.response_headers
                .iter()
                .any(|x| x.name.eq_ignore_ascii_case(&h.name))
        })
        .chain(l.response_headers.iter())
        .collect();
    push_headers(o, i, "add_header", &resp, " always");
    o.push_str("    }\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellplane_slb::{Listen, ProxyOptions, Tls};

    fn opts() -> RenderOptions {
        RenderOptions {
            settings: NginxSettings {
                conf_dir: "/etc/cp".into(),
                pid_file: "/run/cp.pid".into(),
                error_log: "/var/log/cp.log".into(),
                temp_dir: "/var/lib/cp/temp".into(),
                worker_processes: "2".into(),
                ..NginxSettings::default()
            },
            snapshot: "/etc/cp/upstreams.json".into(),
        }
    }

    /// Golden file: `tests/golden/*.conf` (regenerate with `CELLPLANE_BLESS=1`).
    #[test]
    fn golden() {
        let mut domains = BTreeMap::new();
        domains.insert("a.example.com".to_string(), DomainConfig::default());
        domains.insert(
            "b.example.com".to_string(),
            DomainConfig {
                aliases: vec!["*.b.example.com".into()],
                listen: vec![
                    Listen {
                        port: 80,
                        tls: false,
                        http2: false,
                    },
                    Listen {
                        port: 443,
                        tls: true,
                        http2: true,
                    },
                ],
                tls: Some(Tls {
                    certificate: "/etc/ssl/b.pem".into(),
                    key: "/etc/ssl/b.key".into(),
                }),
                locations: vec![
                    Location::default(),
                    Location {
                        path: "/ws".into(),
                        match_kind: MatchKind::Exact,
                        proxy: ProxyOptions {
                            websocket: true,
                            buffering: false,
                            tries: 1,
                            ..Default::default()
                        },
                        request_headers: vec![Header {
                            name: "X-App".into(),
                            value: "b".into(),
                        }],
                        response_headers: vec![Header {
                            name: "X-Frame-Options".into(),
                            value: "DENY".into(),
                        }],
                    },
                ],
                response_headers: vec![Header {
                    name: "X-Frame-Options".into(),
                    value: "SAMEORIGIN".into(),
                }],
                ..DomainConfig::default()
            },
        );
        let tree = render(
            &opts(),
            Path::new("/etc/cp/generations/g00000001"),
            "g00000001",
            &domains,
        );
        let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
        for (rel, name) in [
            ("nginx.conf", "nginx.conf"),
            ("domains/a.example.com.conf", "a.example.com.conf"),
            ("domains/b.example.com.conf", "b.example.com.conf"),
        ] {
            let got = &tree[Path::new(rel)];
            let path = golden.join(name);
            if std::env::var_os("CELLPLANE_BLESS").is_some() {
                std::fs::create_dir_all(&golden).unwrap();
                std::fs::write(&path, got).unwrap();
            }
            let want = std::fs::read_to_string(&path).unwrap();
            assert_eq!(got, &want, "{rel} differs from {}", path.display());
        }
    }
}
