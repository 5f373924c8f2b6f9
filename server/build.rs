//! Builds the browser client (client-web) to WebAssembly and prepares the
//! files the server embeds and serves at `/` (see src/assets.rs).
//!
//! 1. A nested `cargo rustc --target wasm32-unknown-unknown -p client-web
//!    --release --locked --crate-type cdylib` with its own target directory
//!    (`<target>/client-web-wasm`; the outer build holds the lock on its own)
//!    and a size-tuned release profile given through `CARGO_PROFILE_RELEASE_*`.
//! 2. `wasm-bindgen-cli-support` (pinned to client-web's exact wasm-bindgen
//!    version) turns the module into `client_web-<hash>.js` and
//!    `client_web-<hash>_bg.wasm`, for the web (ES module) target. The hash
//!    is of the module's content, so those two are cached forever; the page
//!    and its small `main.js` are revalidated on every load.
//! 3. `$OUT_DIR/assets.rs` lists the files with their content types and cache
//!    headers, for `include!` by src/assets.rs.
//!
//! Skipped (small placeholder page instead) under clippy, and when
//! `BROADCAST_SKIP_WASM=1` (for `cargo check`, rust-analyzer, or a machine
//! without the wasm32 target): set `BROADCAST_SKIP_WASM=1` in the
//! environment of such tools to keep them fast.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-unknown-unknown";
/// The size-tuned profile of the nested build. These override the
/// workspace's `[profile.release]` for that build only.
const PROFILE: [(&str, &str); 6] = [
    ("CARGO_PROFILE_RELEASE_OPT_LEVEL", "z"),
    ("CARGO_PROFILE_RELEASE_LTO", "true"),
    ("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1"),
    ("CARGO_PROFILE_RELEASE_PANIC", "abort"),
    ("CARGO_PROFILE_RELEASE_DEBUG", "false"),
    ("CARGO_PROFILE_RELEASE_INCREMENTAL", "false"),
];
/// Cargo variables that the nested cargo must still see (registry access,
/// offline mode, output style); every other `CARGO_*` variable the outer
/// cargo set for this script would confuse it.
const KEEP_CARGO_VARS: [&str; 6] = [
    "CARGO_HOME",
    "CARGO_NET_",
    "CARGO_HTTP_",
    "CARGO_REGISTRIES_",
    "CARGO_REGISTRY_",
    "CARGO_TERM_",
];

struct File {
    name: String,
    content_type: &'static str,
    cache_control: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const WASM: &str = "application/wasm";
const REVALIDATE: &str = "no-cache";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("server/ is inside the workspace")
        .to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let web_dir = out_dir.join("web");
    if web_dir.exists() {
        fs::remove_dir_all(&web_dir).expect("clear $OUT_DIR/web");
    }
    fs::create_dir_all(&web_dir).expect("create $OUT_DIR/web");

    for path in [
        "client-web/src",
        "client-web/static",
        "client-web/Cargo.toml",
        "protocol/src",
        "protocol/Cargo.toml",
        "Cargo.lock",
        "Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    println!("cargo:rerun-if-env-changed=BROADCAST_SKIP_WASM");
    println!("cargo:rerun-if-env-changed=RUSTC_WORKSPACE_WRAPPER");

    let files = match skip_reason() {
        Some(why) => placeholder(&web_dir, &why),
        None => build_client(&root, &out_dir, &web_dir),
    };
    write_table(&out_dir, &web_dir, &files);
}

/// Why not to build the client this time, if so.
fn skip_reason() -> Option<String> {
    if env::var("BROADCAST_SKIP_WASM").is_ok_and(|v| !v.is_empty() && v != "0") {
        return Some("BROADCAST_SKIP_WASM is set".into());
    }
    // clippy runs build scripts with itself as the workspace wrapper; it only
    // checks, so nobody will serve this build's page.
    if env::var("RUSTC_WORKSPACE_WRAPPER").is_ok_and(|w| w.contains("clippy-driver")) {
        return Some("built by clippy".into());
    }
    None
}

fn placeholder(web_dir: &Path, why: &str) -> Vec<File> {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <link rel=\"icon\" href=\"data:,\">\n<title>broadcast</title>\n</head>\n<body>\n\
         <h1>broadcast</h1>\n<p>This server was built without its browser client ({why}). \
         The WebSocket endpoint is <code>/ws</code>.</p>\n</body>\n</html>\n"
    );
    fs::write(web_dir.join("index.html"), html).expect("write placeholder page");
    vec![File {
        name: "index.html".into(),
        content_type: HTML,
        cache_control: REVALIDATE,
    }]
}

fn build_client(root: &Path, out_dir: &Path, web_dir: &Path) -> Vec<File> {
    let wasm = cargo_build_wasm(root, out_dir);
    let module = fs::read(&wasm).unwrap_or_else(|e| panic!("read {}: {e}", wasm.display()));

    let stem = format!("client_web-{}", content_hash(&module));
    wasm_bindgen_cli_support::Bindgen::new()
        .input_bytes(&stem, module)
        .remove_name_section(true)
        .remove_producers_section(true)
        .web(true)
        .expect("web target")
        .omit_default_module_path(false)
        .typescript(false)
        .generate(web_dir)
        .unwrap_or_else(|e| panic!("wasm-bindgen failed on {}: {e:#}", wasm.display()));
    let js = format!("{stem}.js");
    let bg = format!("{stem}_bg.wasm");
    for name in [&js, &bg] {
        assert!(
            web_dir.join(name).is_file(),
            "wasm-bindgen did not write {name}"
        );
    }

    let static_dir = root.join("client-web/static");
    let html =
        fs::read_to_string(static_dir.join("index.html")).expect("client-web/static/index.html");
    fs::write(web_dir.join("index.html"), html).expect("write index.html");
    let main_js =
        fs::read_to_string(static_dir.join("main.js")).expect("client-web/static/main.js");
    assert!(
        main_js.contains("\"./client_web.js\""),
        "client-web/static/main.js must import \"./client_web.js\""
    );
    let main_js = main_js.replace("\"./client_web.js\"", &format!("\"./{js}\""));
    fs::write(web_dir.join("main.js"), main_js).expect("write main.js");

    vec![
        File {
            name: "index.html".into(),
            content_type: HTML,
            cache_control: REVALIDATE,
        },
        File {
            name: "main.js".into(),
            content_type: JS,
            cache_control: REVALIDATE,
        },
        File {
            name: js,
            content_type: JS,
            cache_control: IMMUTABLE,
        },
        File {
            name: bg,
            content_type: WASM,
            cache_control: IMMUTABLE,
        },
    ]
}

/// Stops the build with `message` as the whole error: cargo shows a build
/// script's standard error under its own one-line summary.
fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}

/// Whether the standard library for [`TARGET`] is installed (asks the
/// rustc cargo uses for its target library directory).
fn target_installed() -> bool {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    Command::new(rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .is_some_and(|dir| dir.is_dir())
}

/// The part of a failed cargo log that says what failed: 30 lines from
/// the first `error`, or its last 10 lines if none starts with it.
fn error_lines(stderr: &str) -> String {
    let all: Vec<&str> = stderr.lines().collect();
    let start = all
        .iter()
        .position(|l| l.trim_start().starts_with("error"))
        .unwrap_or(all.len().saturating_sub(10));
    all[start..]
        .iter()
        .take(30)
        .copied()
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs the nested cargo build and returns the path of the raw module.
fn cargo_build_wasm(root: &Path, out_dir: &Path) -> PathBuf {
    if !target_installed() {
        fail(&format!(
            "the browser client needs the {TARGET} target: run `rustup target add {TARGET}` \
             (or build without the browser client: BROADCAST_SKIP_WASM=1 cargo build)"
        ));
    }
    // <target>/<profile>/build/server-<hash>/out -> <target>; a separate
    // directory inside it, shared by debug and release outer builds.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .filter(|t| t.join("CACHEDIR.TAG").is_file())
        .map_or_else(
            || out_dir.join("wasm-target"),
            |t| t.join("client-web-wasm"),
        );
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());

    let mut cmd = Command::new(&cargo);
    cmd.current_dir(root)
        // `rustc --crate-type cdylib` rather than `build`: cargo skips LTO
        // for a crate that is also an rlib (client-web is one, for its
        // native unit tests).
        .args([
            "rustc",
            "--release",
            "--locked",
            "-p",
            "client-web",
            "--lib",
        ])
        .args(["--crate-type", "cdylib"])
        .args(["--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir);
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let leaked_cargo =
            key.starts_with("CARGO_") && !KEEP_CARGO_VARS.iter().any(|k| key.starts_with(k));
        if leaked_cargo
            || matches!(
                key,
                "RUSTC_WORKSPACE_WRAPPER"
                    | "RUSTFLAGS"
                    | "RUSTDOCFLAGS"
                    | "DEBUG"
                    | "OPT_LEVEL"
                    | "PROFILE"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "NUM_JOBS"
                    | "RUSTC_LINKER"
            )
        {
            cmd.env_remove(key);
        }
    }
    cmd.envs(PROFILE);

    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", Path::new(&cargo).display()));
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        fail(&format!(
            "building the browser client (client-web) for {TARGET} failed:\n{}",
            error_lines(&stderr)
        ));
    }
    let wasm = target_dir
        .join(TARGET)
        .join("release")
        .join("client_web.wasm");
    assert!(wasm.is_file(), "{} missing after the build", wasm.display());
    wasm
}

/// FNV-1a (64 bits) of the module and the wasm-bindgen options: the glue
/// and module names change whenever their content can.
fn content_hash(module: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in module.iter().chain(b"wasm-bindgen =0.2.130 web".iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// `$OUT_DIR/assets.rs`: `FILES`, a table of (URL path, body, content type,
/// cache control) for src/assets.rs.
fn write_table(out_dir: &Path, web_dir: &Path, files: &[File]) {
    let mut src = String::from(
        "/// Generated by server/build.rs: (path, body, content type, cache control).\n\
         const FILES: &[(&str, &[u8], &str, &str)] = &[\n",
    );
    for f in files {
        let path = web_dir.join(&f.name);
        let path = path.to_str().expect("OUT_DIR is UTF-8");
        writeln!(
            src,
            "    ({:?}, include_bytes!({:?}), {:?}, {:?}),",
            format!("/{}", f.name),
            path,
            f.content_type,
            f.cache_control
        )
        .expect("write to a String");
    }
    src.push_str("];\n");
    fs::write(out_dir.join("assets.rs"), src).expect("write $OUT_DIR/assets.rs");
}
