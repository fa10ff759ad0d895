// Sets BERTH_BUILD_GIT_REV (the git revision, for `--version`); the logic is shared with the
// other daemon and lives in plugin-transport (std only, so no build-dependency is needed).
include!("../plugin-transport/src/build_info.rs");

fn main() {
    emit();
}
