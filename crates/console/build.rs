//! Embeds the built browser app (`web/dist`, made by `scripts/build-web.sh`) in the
//! binary: one table of (path, content type, ETag, bytes, gzip bytes) written to OUT_DIR.
//! `KUBEVIRT_RS_WEB_DIST` points elsewhere (a prebuilt copy).

use std::io::Write;
use std::path::{Path, PathBuf};

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "ttf" => "font/ttf",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn main() {
    println!("cargo:rerun-if-env-changed=KUBEVIRT_RS_WEB_DIST");
    let dist = std::env::var_os("KUBEVIRT_RS_WEB_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/dist"));
    println!("cargo:rerun-if-changed={}", dist.display());
    if !dist.join("index.html").is_file() {
        panic!(
            "the web console is not built ({} has no index.html): run `bash scripts/build-web.sh` \
             (it installs the npm packages and builds web/ into web/dist)",
            dist.display()
        );
    }
    let mut paths = Vec::new();
    files(&dist, &mut paths);
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let mut table = String::from("&[\n");
    for (i, path) in paths.iter().enumerate() {
        println!("cargo:rerun-if-changed={}", path.display());
        let bytes = std::fs::read(path).unwrap();
        let rel = path
            .strip_prefix(&dist)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let etag = {
            use sha2::Digest;
            hex::encode(&sha2::Sha256::digest(&bytes)[..12])
        };
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(&bytes).unwrap();
            e.finish().unwrap()
        };
        let gz_path = out_dir.join(format!("asset{i}.gz"));
        std::fs::write(&gz_path, &gz).unwrap();
        // Gzip only where it saves something (images and fonts are compressed already).
        let gz_expr = if gz.len() < bytes.len() * 9 / 10 {
            format!("Some(include_bytes!({:?}))", gz_path.display().to_string())
        } else {
            "None".to_string()
        };
        table.push_str(&format!(
            "    Asset {{ path: {rel:?}, content_type: {:?}, etag: {etag:?}, body: include_bytes!({:?}), gzip: {gz_expr} }},\n",
            content_type(path),
            path.canonicalize().unwrap().display().to_string(),
        ));
    }
    table.push_str("]\n");
    std::fs::write(out_dir.join("assets.rs"), table).unwrap();
}
