//! The documentation: the README stays short, and every relative link in it, in `docs/` and in
//! `tools/README.md` leads to a file that exists and, with a `#fragment`, to a heading there.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The lines outside fenced code blocks.
fn prose(markdown: &str) -> impl Iterator<Item = &str> {
    let mut in_code = false;
    markdown.lines().filter(move |line| {
        if line.starts_with("```") {
            in_code = !in_code;
            return false;
        }
        !in_code
    })
}

fn anchors(markdown: &str) -> Vec<String> {
    prose(markdown).filter(|l| l.starts_with('#')).map(|l| anchor(l.trim_start_matches('#'))).collect()
}

/// The targets of `[text](target)` links outside code blocks.
fn links(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(markdown) {
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            if let Some(end) = rest.find(')') {
                out.push(rest[..end].to_string());
                rest = &rest[end..];
            }
        }
    }
    out
}

fn check(file: &Path, problems: &mut Vec<String>) {
    let text = std::fs::read_to_string(file).unwrap();
    let dir = file.parent().unwrap();
    for target in links(&text) {
        if target.starts_with("http://") || target.starts_with("https://") {
            continue;
        }
        let (path, fragment) = target.split_once('#').map_or((target.as_str(), None), |(p, f)| (p, Some(f)));
        let linked = if path.is_empty() { file.to_path_buf() } else { dir.join(path) };
        if !linked.exists() {
            problems.push(format!("{}: `{target}`: no such file", file.display()));
            continue;
        }
        if let Some(fragment) = fragment {
            let text = std::fs::read_to_string(&linked).unwrap_or_default();
            if !anchors(&text).iter().any(|a| a == fragment) {
                problems.push(format!("{}: `{target}`: no such heading", file.display()));
            }
        }
    }
}

#[test]
fn the_readme_is_short_and_every_link_resolves() {
    let readme = root().join("README.md");
    let size = std::fs::metadata(&readme).unwrap().len();
    assert!(size <= 12 * 1024, "README.md is {size} bytes; keep it under 12 KB and move details to docs/");
    let mut files = vec![readme, root().join("tools/README.md")];
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    assert!(files.len() >= 8, "{files:?}");
    let mut problems = Vec::new();
    for file in &files {
        check(file, &mut problems);
    }
    assert!(problems.is_empty(), "broken links:\n{}", problems.join("\n"));
    let text = std::fs::read_to_string(root().join("README.md")).unwrap();
    for needed in ["make run", "make test", "docs/layouts.md", "docs/service.md", "docs/models.md"] {
        assert!(text.contains(needed), "the README lacks `{needed}`");
    }
}

#[test]
fn anchors_follow_githubs_rule() {
    assert_eq!(anchor(" Bring your own checkpoints: `mixgan import`"), "bring-your-own-checkpoints-mixgan-import");
    assert_eq!(anchor("Checked against NVIDIA's code"), "checked-against-nvidias-code");
    assert_eq!(
        anchor("TorchScript models (StyleGAN3 and anything custom)"),
        "torchscript-models-stylegan3-and-anything-custom"
    );
}
