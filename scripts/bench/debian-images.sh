#!/usr/bin/env bash
# Real Debian images for the transfer bench, built once into $OUT (default /var/tmp/osfarm-bench):
#   minbase.img        bookworm minbase, mke2fs -d (2 GiB, reproducible: fixed UUID, hash seed, time)
#   ssh.img            minbase + openssh-server python3 curl, built the same way, independently
#   ssh-layer.img      minbase.img itself, loop-mounted, with the same packages installed on top
#                      (an image built as a layer of minbase)
set -euo pipefail
OUT=${OUT:-/var/tmp/osfarm-bench}
SIZE=${SIZE:-2G}
PKGS=openssh-server,python3,curl
mkdir -p "$OUT"
export E2FSPROGS_FAKE_TIME=1700000000

mkimg () { # rootdir image
  rm -f "$2"; truncate -s "$SIZE" "$2"
  mke2fs -q -F -t ext4 -b 4096 -U 6f7a2c84-0c4e-4a57-9c55-2f0c1d6a7e10 -E hash_seed=3c1b5f8e-9a4d-4e2b-8f6a-1d2c3b4a5e6f,root_owner=0:0 -d "$1" "$2"
}

build () { # name include
  local img=$OUT/$1.img dir=$OUT/$1.root
  [ -s "$img" ] && return
  rm -rf "$dir"
  mmdebstrap --quiet --variant=minbase ${2:+--include=$2} bookworm "$dir"
  mkimg "$dir" "$img.tmp" && mv "$img.tmp" "$img"
  rm -rf "$dir"
}

build minbase
build ssh "$PKGS"

if [ ! -s "$OUT/ssh-layer.img" ]; then
  cp --sparse=always "$OUT/minbase.img" "$OUT/ssh-layer.img.tmp"
  mnt=$(mktemp -d)
  mount -o loop "$OUT/ssh-layer.img.tmp" "$mnt"
  trap 'umount -R "$mnt" 2>/dev/null || true' EXIT
  for d in proc sys dev; do mount --rbind /$d "$mnt/$d"; done
  cp /etc/resolv.conf "$mnt/etc/resolv.conf"
  chroot "$mnt" sh -c "apt-get -qq update && DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends ${PKGS//,/ } >/dev/null && apt-get clean && rm -rf /var/lib/apt/lists/*"
  umount -R "$mnt"
  trap - EXIT
  rmdir "$mnt"
  mv "$OUT/ssh-layer.img.tmp" "$OUT/ssh-layer.img"
fi
ls -ls "$OUT"/*.img
