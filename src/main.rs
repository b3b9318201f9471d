//! The `mixgan` binary: everything it does lives in [`mixgan::cli`].

fn main() -> std::process::ExitCode {
    mixgan::cli::main()
}
