#!/bin/sh
# `make image-check`: build the appliance twice from the same inputs (appliance.toml, the locks,
# the sources, SOURCE_DATE_EPOCH) and compare the outputs byte by byte.
set -eu
cd "$(dirname "$0")/.."
out=build/image-check
rm -rf "$out"
for n in 1 2; do
    /usr/bin/python3 image/build.py --out "$out/$n"
done
status=0
for f in rootfs.squashfs initrd.img vmlinuz disk.raw; do
    if cmp -s "$out/1/$f" "$out/2/$f"; then
        echo "identical: $f"
    else
        echo "DIFFERENT: $f"
        status=1
    fi
done
exit "$status"
