//! The `petrel` binary: Envoy's command line, plus `petrel redirect ...` for capture rules.
fn main() -> std::process::ExitCode {
    petrel::app::main()
}
