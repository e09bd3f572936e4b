//! Prints the CRDs as YAML (what `kubevirt-rs crds` prints).
fn main() {
    print!("{}", kubevirt_api::crds::to_yaml());
}
