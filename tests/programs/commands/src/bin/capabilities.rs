//! Tries to reach outside its sandbox: a file, the environment, a socket,
//! the arguments. Prints what it got as JSON.
use std::io::Read;

fn main() {
    let file = match std::fs::File::open("/etc/passwd") {
        Ok(mut f) => {
            let mut s = String::new();
            let _ = f.read_to_string(&mut s);
            format!("opened: {} bytes", s.len())
        }
        Err(e) => format!("error: {e}"),
    };
    let dir = match std::fs::read_dir(".") {
        Ok(entries) => format!("listed: {} entries", entries.count()),
        Err(e) => format!("error: {e}"),
    };
    let env: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    let home = std::env::var("HOME").ok();
    let socket = match std::net::TcpStream::connect("127.0.0.1:22") {
        Ok(_) => "connected".to_string(),
        Err(e) => format!("error: {e}"),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    print!(
        "{{\"file\":{file:?},\"dir\":{dir:?},\"env_count\":{},\"home\":{},\"socket\":{socket:?},\"args\":{}}}",
        env.len(),
        home.map_or("null".to_string(), |h| format!("{h:?}")),
        args.len()
    );
}
