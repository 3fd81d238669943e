//! `scripts/fetch-brown.sh`: the tag-stripping conversion, run offline on a small corpus in the
//! Brown format (`--from` skips the fetch).

use std::path::{Path, PathBuf};
use std::process::Command;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gptk-data-brown-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-brown.sh")
}

fn have_python() -> bool {
    Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success())
}

#[test]
fn tagged_documents_become_plain_text_and_a_genre_table() {
    if !have_python() {
        eprintln!("python3 not found: the conversion cannot run here");
        return;
    }
    let dir = temp_dir("convert");
    let pkg = dir.join("package");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(
        pkg.join("ca01"),
        "\n\n\tThe/at Fulton/np-tl County/nn-tl said/vbd ``/`` no/at evidence/nn ''/'' ,/, ok/jj ./.\n\n\n\
         \tMayor/nn-tl Ivan/np Allen/np Jr./np ./.\nIt/pps cost/vbd $30/nns (/( and/or/cc more/ap )/) ;/. fine/jj ?/.\n",
    )
    .unwrap();
    std::fs::write(pkg.join("ck01"), "\n\nThirty-three/cd-hl\nScotty/np did/dod not/* go/vb ./.\n").unwrap();
    std::fs::write(pkg.join("cats.txt"), "ca01 news\nck01 fiction\n").unwrap();
    std::fs::write(pkg.join("README"), "not a document").unwrap();
    let out = dir.join("brown");
    let run = Command::new("sh").arg(script()).arg("--from").arg(&pkg).arg(&out).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let ca01 = std::fs::read_to_string(out.join("text/ca01.txt")).unwrap();
    assert_eq!(
        ca01,
        "The Fulton County said \"no evidence\", ok.\n\n\
         Mayor Ivan Allen Jr. It cost $30 (and/or more); fine?\n"
    );
    let ck01 = std::fs::read_to_string(out.join("text/ck01.txt")).unwrap();
    assert_eq!(ck01, "Thirty-three\n\nScotty did not go.\n", "a heading is a paragraph of its own");
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(out.join("genres.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows[0],
        serde_json::json!({"id": "ca01", "genre": "ca", "genre_name": "press reportage", "file": "text/ca01.txt", "words": 17})
    );
    assert_eq!(rows[1]["genre_name"], "general fiction");
    assert!(!out.join("text/README.txt").exists() && !out.join("text/cats.txt.txt").exists());
}

#[test]
fn bad_arguments_and_sources_fail_with_a_message() {
    if !have_python() {
        eprintln!("python3 not found: the conversion cannot run here");
        return;
    }
    let dir = temp_dir("bad");
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    for (args, needle) in [
        (
            vec!["--from".to_string(), empty.display().to_string(), dir.join("o").display().to_string()],
            "0 Brown documents",
        ),
        (vec!["--from".to_string(), dir.join("missing").display().to_string()], "no such directory"),
        (vec!["--bogus".to_string()], "unknown option --bogus"),
    ] {
        let run = Command::new("sh").arg(script()).args(&args).current_dir(&dir).output().unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success() && err.contains(needle), "{args:?}: {err}");
    }
}
