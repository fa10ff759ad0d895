#!/bin/sh
# The linker of the EL-compatible build (packaging/build-bins.sh): Zig's clang driver linking
# against glibc 2.28's symbol versions, through cargo-zigbuild's argument filter (it drops or
# rewrites the rustc link arguments zig cc does not take).
exec cargo-zigbuild zig cc -- -g -fno-sanitize=all -target x86_64-linux-gnu.2.28 "$@"
