//! Pushes against its scratch directory's bound (`TMPDIR`), in the mode
//! named on stdin:
//! - `files`: creates empty files until refused; prints how many and why.
//! - `sparse`: writes one byte far past the end of a file (after a seek),
//!   which grows the file past the bound in one write.
//! - `list`: prints the names in the scratch directory (it starts empty).
//! - `input:…`: reads its input again from `$TMPDIR/input`, seeking to its
//!   last 5 bytes, and prints them with the file's length.
//! - `link`: tries to reach the read-only `/data/inside.txt` for writing
//!   through the writable scratch directory: a hard link, a symbolic link,
//!   a rename. Prints what each attempt got.
use std::io::{Read, Seek, SeekFrom, Write};

fn main() {
    let mut mode = String::new();
    std::io::stdin().read_to_string(&mut mode).unwrap();
    let dir = std::env::var("TMPDIR").expect("TMPDIR is set with a scratch directory");
    match mode.trim() {
        "files" => {
            let mut n = 0;
            let error = loop {
                match std::fs::File::create(format!("{dir}/f{n}")) {
                    Ok(_) => n += 1,
                    Err(e) => break e,
                }
                if n > 1_000_000 {
                    panic!("never refused");
                }
            };
            print!("{{\"files\":{n},\"error\":{:?}}}", error.to_string());
        }
        "sparse" => {
            let mut f = std::fs::File::create(format!("{dir}/sparse")).unwrap();
            f.seek(SeekFrom::Start(1 << 30)).unwrap();
            let result = f.write_all(b"x");
            print!("{{\"write\":{:?}}}", format!("{result:?}"));
        }
        "list" => {
            let names: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| format!("{:?}", e.unwrap().file_name().to_string_lossy()))
                .collect();
            std::fs::write(format!("{dir}/left-behind"), b"should be removed").unwrap();
            print!("[{}]", names.join(","));
        }
        other if other.starts_with("input:") => {
            let mut f = std::fs::File::open(format!("{dir}/input")).unwrap();
            let len = f.seek(SeekFrom::End(0)).unwrap();
            f.seek(SeekFrom::End(-5)).unwrap();
            let mut tail = String::new();
            f.read_to_string(&mut tail).unwrap();
            print!("{{\"len\":{len},\"tail\":{tail:?},\"same\":{}}}", len as usize == mode.len());
        }
        "link" => {
            let show = |r: std::io::Result<()>| match r {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("error: {e}"),
            };
            let hard = show(std::fs::hard_link("/data/inside.txt", format!("{dir}/hard")));
            // `soft_link` is the stable symlink call on WASI.
            #[allow(deprecated)]
            let symlink = show(
                std::fs::soft_link("/data/inside.txt", format!("{dir}/soft"))
                    .and_then(|()| {
                        std::fs::OpenOptions::new()
                            .append(true)
                            .open(format!("{dir}/soft"))
                            .and_then(|mut f| f.write_all(b"changed"))
                    }),
            );
            let rename = show(std::fs::rename("/data/inside.txt", format!("{dir}/moved")));
            print!("{{\"hard\":{hard:?},\"symlink\":{symlink:?},\"rename\":{rename:?}}}");
        }
        other => panic!("unknown mode {other:?}"),
    }
}
