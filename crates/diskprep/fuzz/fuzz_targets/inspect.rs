//! Arbitrary bytes as a disk image: the inspector and both policies must neither panic nor
//! allocate without bound, whatever a header claims.
#![no_main]

use kubevirt_diskprep::inspect::{inspect_image, ImagePolicy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut file = std::io::Cursor::new(data);
    let info = inspect_image(&mut file).expect("reading a Cursor cannot fail");
    assert!(info.findings.len() <= 32);
    for policy in [ImagePolicy::Imported, ImagePolicy::OpenedAsRaw] {
        if let Some(reason) = info.refusal(policy) {
            // Messages stay short enough for a VMI condition.
            assert!(reason.len() < 4 * 1024, "{} bytes", reason.len());
        }
    }
});
