#!/usr/bin/env bash
# Builds one .deb per component into target/debian/ with dpkg-deb (no other tooling needed).
# Each package is described by packaging/debian/<package>.manifest: lines "SOURCE DEST MODE";
# SOURCE is relative to the repository root (release binaries are under target/release/).
# Files installed under /etc are conffiles: dpkg never overwrites one the operator changed.
# Maintainer scripts, if any: packaging/debian/<package>.{postinst,prerm,postrm}.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(cellplane-cni cellplane-cnictl cellplane-nginx-agent cellplane-control-api cellplane-discovery cellplane-build-agent)

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
ARCH=$(dpkg --print-architecture)
OUT=target/debian
rm -rf "$OUT" && mkdir -p "$OUT"

crates=()
for p in "${PACKAGES[@]}"; do crates+=(-p "$p"); done
cargo build --release "${crates[@]}"

for pkg in "${PACKAGES[@]}"; do
  stage="$OUT/stage/$pkg"
  mkdir -p "$stage/DEBIAN"
  : >"$stage/DEBIAN/conffiles"
  while read -r src dest mode; do
    [ -z "$src" ] || [ "${src:0:1}" = "#" ] && continue
    install -D -m "$mode" "$src" "$stage$dest"
    # programs ship without debug info, as Debian packages do
    case "$dest" in */bin/*) strip --strip-unneeded "$stage$dest" ;; esac
    case "$dest" in /etc/*) echo "$dest" >>"$stage/DEBIAN/conffiles" ;; esac
  done <"packaging/debian/$pkg.manifest"
  [ -s "$stage/DEBIAN/conffiles" ] || rm "$stage/DEBIAN/conffiles"
  for script in postinst prerm postrm; do
    if [ -f "packaging/debian/$pkg.$script" ]; then
      install -m 0755 "packaging/debian/$pkg.$script" "$stage/DEBIAN/$script"
    fi
  done
  size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
  {
    echo "Package: $pkg"
    echo "Version: $VERSION"
    echo "Architecture: $ARCH"
    echo "Maintainer: cellplane developers <dev@cellplane.invalid>"
    echo "Installed-Size: $size"
    sed -n 's/^Depends: /Depends: /p; s/^Section: /Section: /p' "packaging/debian/$pkg.control"
    echo "Priority: optional"
    sed -n '/^Description:/,$p' "packaging/debian/$pkg.control"
  } >"$stage/DEBIAN/control"
  dpkg-deb --root-owner-group --build "$stage" "$OUT/${pkg}_${VERSION}_${ARCH}.deb" >/dev/null
  echo "package: $OUT/${pkg}_${VERSION}_${ARCH}.deb"
done
rm -rf "$OUT/stage"
