//! Standalone `petrel redirect` for trying the rules out: `cargo run -p redirect --example
//! petrel-redirect -- -b '*' -i '*' --dry-run`. The proxy binary exposes the same flags as
//! `petrel redirect`.
use clap::Parser;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    if let Err(error) = redirect::run(redirect::RedirectArgs::parse()) {
        eprintln!("petrel redirect: {error}");
        std::process::exit(1);
    }
}
