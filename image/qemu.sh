#!/bin/sh
# `make vm`: boot build/image/disk.raw under UEFI (OVMF) with the console on this terminal
# (Ctrl-A X quits). The guest's HTTP trigger (8080) is on 127.0.0.1:${PORT:-8080} and its API
# (8001) on 127.0.0.1:${API_PORT:-8001}. TOKEN=<16-512 printable characters> provisions the
# management token (SMBIOS type 11 credential); without it the first boot prints a generated one.
# Writes go to a throw-away qcow2 layer, so the image itself stays pristine.
set -eu
cd "$(dirname "$0")/.."
layer=$(mktemp --suffix=.qcow2)
trap 'rm -f "$layer"' EXIT
qemu-img create -q -f qcow2 -F raw -b "$PWD/build/image/disk.raw" "$layer" 4G
accel=tcg
[ "${ACCEL:-}" = kvm ] && accel=kvm
set --
[ -n "${TOKEN:-}" ] && set -- -smbios "type=11,value=io.systemd.credential:easyfaas.token=$TOKEN"
qemu-system-x86_64 -accel "$accel" -M q35 -m 1024 -smp 2 -bios /usr/share/ovmf/OVMF.fd \
    -nodefaults -no-user-config -display none -serial mon:stdio \
    -drive "id=d0,file=$layer,format=qcow2,if=none" -device virtio-blk-pci,drive=d0 \
    -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:${PORT:-8080}-:8080,hostfwd=tcp:127.0.0.1:${API_PORT:-8001}-:8001" \
    -device virtio-net-pci,netdev=n0 "$@"
