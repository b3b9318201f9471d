//! The Python that runs the project's helper scripts in `tools/` (the checkpoint importer,
//! the reference generator `bench` compares with): `--python`, else `$MIXGAN_PYTHON`, else the
//! environment `scripts/setup-torch` made in the cache when it exists, else `python3`.

use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

/// The PyTorch that `scripts/setup-torch` installs (the version `tch` binds).
pub const TORCH_VERSION: &str = "2.11.0";

#[derive(Debug, Error)]
pub enum PythonError {
    #[error(
        "cannot run {python}: {source}; set MIXGAN_PYTHON (or --python) to a Python with PyTorch, or run `make setup`"
    )]
    Missing { python: PathBuf, source: std::io::Error },
    #[error(
        "{python} cannot import {modules}: {detail}\n  fix: run `make setup` (it installs PyTorch {TORCH_VERSION} into the \
         cache, where mixgan finds it), or set MIXGAN_PYTHON (or --python) to a Python that has them"
    )]
    NoModules { python: PathBuf, modules: String, detail: String },
}

/// The Python to run: `flag`, else `$MIXGAN_PYTHON`, else the cached environment, else `python3`.
pub fn python(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("MIXGAN_PYTHON").filter(|v| !v.is_empty()).map(PathBuf::from))
        .or_else(cached_environment)
        .unwrap_or_else(|| "python3".into())
}

/// `bin/python` of the environment `scripts/setup-torch` makes, when it is there.
pub fn cached_environment() -> Option<PathBuf> {
    let venv = match std::env::var_os("MIXGAN_VENV") {
        Some(v) => PathBuf::from(v),
        None => {
            let cache = std::env::var_os("MIXGAN_CACHE")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/mixgan")))?;
            cache.join(format!("venv-torch-{TORCH_VERSION}"))
        }
    };
    let python = venv.join("bin/python");
    python.is_file().then_some(python)
}

/// Checks that `python` imports `modules`, so a missing package is reported with its fix
/// instead of as a traceback halfway through a conversion.
pub fn check(python: &Path, modules: &[&str]) -> Result<(), PythonError> {
    let out = Command::new(python)
        .args(["-c", &format!("import {}", modules.join(", "))])
        .output()
        .map_err(|source| PythonError::Missing { python: python.into(), source })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(PythonError::NoModules {
        python: python.into(),
        modules: modules.join(", "),
        detail: stderr.lines().last().unwrap_or("").trim().to_string(),
    })
}

/// A script of `tools/`: under the working directory, else beside the binary's repository.
pub fn tool(name: &str) -> PathBuf {
    let local = Path::new("tools").join(name);
    if local.is_file() {
        return local;
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1) {
            let p = dir.join("tools").join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    local
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_python_without_the_modules_says_how_to_fix_it() {
        let err = check(Path::new("python3"), &["no_such_module_for_mixgan"]).unwrap_err().to_string();
        assert!(err.contains("no_such_module_for_mixgan") && err.contains("make setup"), "{err}");
        let err = check(Path::new("/nonexistent/python"), &["os"]).unwrap_err().to_string();
        assert!(err.contains("cannot run /nonexistent/python"), "{err}");
        check(Path::new("python3"), &["os", "sys"]).unwrap();
    }

    #[test]
    fn the_flag_wins() {
        assert_eq!(python(Some("/opt/py".into())), PathBuf::from("/opt/py"));
    }
}
