//! Builds a NoCloud seed ISO from a user-data file: `cargo run --example seed_iso -- USER_DATA OUT.iso`.
//! Handy for checking an image by hand (isoinfo, blkid, mount).

use kubevirt_diskprep::cloudinit::{
    write_seed_iso, CloudInitKind, CloudInitSource, InstanceIdentity,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, user_data, out] = args.as_slice() else {
        return Err("usage: seed_iso USER_DATA OUT.iso".into());
    };
    let source = CloudInitSource {
        user_data_secret: Some(std::fs::read(user_data)?),
        ..Default::default()
    };
    let identity = InstanceIdentity {
        namespace: "default".into(),
        name: "example".into(),
        uid: None,
        hostname: None,
        public_keys: Vec::new(),
    };
    write_seed_iso(
        "example",
        CloudInitKind::NoCloud,
        &source,
        &identity,
        out.as_ref(),
    )?;
    Ok(())
}
