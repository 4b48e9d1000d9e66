//! Tries to get out of the read-only directory granted at `/data`: through
//! `..`, through symbolic links (absolute and relative) the host put there,
//! by an absolute path, and by writing. Prints what each attempt got, as
//! JSON; a line per attempt on stderr.
fn attempt(name: &str, result: std::io::Result<String>) -> String {
    let text = match result {
        Ok(s) => format!("ok: {s}"),
        Err(e) => format!("error: {e}"),
    };
    eprintln!("{name}: {text}");
    format!("{name:?}:{text:?}")
}

fn main() {
    let read = |p: &str| std::fs::read_to_string(p);
    let results = [
        attempt("inside", read("/data/inside.txt")),
        attempt("dotdot", read("/data/../secret.txt")),
        attempt("dotdot_deep", read("/data/sub/../../secret.txt")),
        attempt("symlink_absolute", read("/data/abs_link")),
        attempt("symlink_relative", read("/data/rel_link")),
        attempt("absolute", read("/secret.txt")),
        attempt(
            "write_new",
            std::fs::write("/data/new.txt", b"x").map(|()| "written".into()),
        ),
        attempt(
            "write_existing",
            std::fs::OpenOptions::new()
                .append(true)
                .open("/data/inside.txt")
                .map(|_| "opened for writing".into()),
        ),
        attempt(
            "mkdir",
            std::fs::create_dir("/data/newdir").map(|()| "created".into()),
        ),
        attempt(
            "remove",
            std::fs::remove_file("/data/inside.txt").map(|()| "removed".into()),
        ),
    ];
    print!("{{{}}}", results.join(","));
}
