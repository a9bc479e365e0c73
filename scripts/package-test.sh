#!/usr/bin/env bash
# The packages as an operator meets them: install every .deb from target/debian/, check each
# binary answers --version, verify every unit with systemd-analyze, check that a changed config
# survives a reinstall, then remove and purge and check nothing of ours is left.
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob
debs=(target/debian/*.deb)
[ ${#debs[@]} -gt 0 ] || { echo "package-test: no packages in target/debian (run make package)" >&2; exit 1; }
pkgs=()
for d in "${debs[@]}"; do pkgs+=("$(dpkg-deb -f "$d" Package)"); done
fail() { echo "package-test: FAIL: $*" >&2; exit 1; }
passed=0
ok() { echo "package-test: ok: $*"; passed=$((passed + 1)); }

dpkg -i "${debs[@]}" >/dev/null
ok "installed ${pkgs[*]}"

for b in /opt/cni/bin/cellplane /usr/bin/cnictl /usr/bin/nginx-agent /usr/bin/control-api /usr/bin/discovery /usr/bin/build-agent; do
  pkg_of=$(dpkg -S "$b" 2>/dev/null | cut -d: -f1 || true)
  [ -n "$pkg_of" ] || continue
  v=$("$b" --version) || fail "$b --version"
  ok "$b --version: $v"
done

units=(/lib/systemd/system/cellplane-*.service /lib/systemd/system/cellplane-*.timer)
[ ${#units[@]} -gt 0 ] || fail "no units installed"
out=$(systemd-analyze verify "${units[@]}" 2>&1) || fail "systemd-analyze verify: $out"
# verify prints warnings without failing; ours must have none
if echo "$out" | grep -v -e "^$" | grep -q .; then fail "systemd-analyze verify warnings: $out"; fi
ok "systemd-analyze verify ${units[*]##*/}"

getent passwd cellplane >/dev/null || fail "system user cellplane not created"
[ "$(stat -c %G:%a /etc/cellplane/control-api.toml)" = "cellplane:640" ] || fail "control-api.toml not 0640 root:cellplane"
ok "system user and config permissions"

# a changed config is never overwritten
echo "# changed by the operator" >>/etc/cellplane/cnictl.toml
dpkg -i target/debian/cellplane-cnictl_*.deb >/dev/null
grep -q "changed by the operator" /etc/cellplane/cnictl.toml || fail "reinstall overwrote a changed conffile"
ok "changed conffile kept across reinstall"

dpkg -r "${pkgs[@]}" >/dev/null
for b in /opt/cni/bin/cellplane /usr/bin/cnictl /usr/bin/nginx-agent /usr/bin/control-api /usr/bin/discovery /usr/bin/build-agent /lib/systemd/system/cellplane-nginx-agent.service /lib/systemd/system/cellplane-build-agent.service; do
  [ ! -e "$b" ] || fail "$b left after dpkg -r"
done
[ -f /etc/cellplane/cnictl.toml ] || fail "dpkg -r removed a conffile (only purge should)"
ok "dpkg -r removed the programs and kept the configs"
dpkg -P "${pkgs[@]}" >/dev/null
for c in cnictl.toml nginx-agent.toml control-api.toml discovery.toml build-agent.toml; do
  [ ! -e "/etc/cellplane/$c" ] || fail "/etc/cellplane/$c left after purge"
done
for p in "${pkgs[@]}"; do
  ! dpkg -s "$p" >/dev/null 2>&1 || fail "$p still known to dpkg"
done
ok "dpkg -P purged everything"
echo "package-test: $passed passed, 0 failed"
