//! A TCP proxy in front of a real S3 server that loses the replies of chosen requests: the
//! request reaches the server whole and the server answers, but the client sees its connection
//! close instead of the answer, exactly the ambiguous outcome of a timeout after the server
//! committed. Everything else passes through unchanged.
//!
//! It reads the client's side as HTTP/1.1 requests (a head, then `Content-Length` bytes) to
//! know which request a reply belongs to; the server's side is copied as bytes. A request with
//! a chunked body is passed on and never chosen (its end is not tracked); the requests chosen
//! here (object PUTs) carry a length.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct ReplyDropper {
    /// `http://127.0.0.1:PORT`: the endpoint clients use instead of the server's.
    pub endpoint: String,
    /// Per rule: (method, path substring, replies still to lose).
    rules: Arc<Mutex<Vec<(String, String, usize)>>>,
    /// "METHOD PATH" of every request whose reply was lost, in order.
    lost: Arc<Mutex<Vec<String>>>,
}

impl ReplyDropper {
    /// A proxy to `upstream` (`http://HOST:PORT`) that loses the replies of the first `n`
    /// requests of each rule `(method, path substring, n)`.
    pub fn start(upstream: &str, rules: &[(&str, &str, usize)]) -> ReplyDropper {
        let upstream = upstream
            .strip_prefix("http://")
            .expect("an http:// upstream")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let rules = Arc::new(Mutex::new(
            rules
                .iter()
                .map(|(m, p, n)| (m.to_string(), p.to_string(), *n))
                .collect::<Vec<_>>(),
        ));
        let lost = Arc::new(Mutex::new(Vec::new()));
        {
            let (rules, lost) = (rules.clone(), lost.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    let (rules, lost, upstream) = (rules.clone(), lost.clone(), upstream.clone());
                    std::thread::spawn(move || {
                        let _ = serve(client, &upstream, &rules, &lost);
                    });
                }
            });
        }
        ReplyDropper {
            endpoint,
            rules,
            lost,
        }
    }

    /// Loses the replies of the next `n` requests `method` to a path containing `path` too.
    pub fn lose(&self, method: &str, path: &str, n: usize) {
        self.rules
            .lock()
            .unwrap()
            .push((method.to_string(), path.to_string(), n));
    }

    /// The requests whose replies were lost so far ("METHOD PATH").
    pub fn lost(&self) -> Vec<String> {
        self.lost.lock().unwrap().clone()
    }

    /// Replies still to lose, summed over the rules.
    pub fn pending(&self) -> usize {
        self.rules.lock().unwrap().iter().map(|r| r.2).sum()
    }
}

/// One client connection: requests go to a fresh upstream connection; replies come back
/// through another thread, which swallows the one after a chosen request and closes both.
fn serve(
    mut client: TcpStream,
    upstream: &str,
    rules: &Mutex<Vec<(String, String, usize)>>,
    lost: &Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    let mut server = TcpStream::connect(upstream)?;
    let swallow: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let done = Arc::new(AtomicBool::new(false));
    {
        let (mut from, mut to) = (server.try_clone()?, client.try_clone()?);
        let (swallow, lost, done) = (swallow.clone(), lost.clone(), done.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if let Some(what) = swallow.lock().unwrap().take() {
                    // The server answered the chosen request: the client never sees it.
                    lost.lock().unwrap().push(what);
                    break;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            done.store(true, Ordering::SeqCst);
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
        });
    }
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // The head of the next request.
        let head_end = loop {
            if let Some(i) = find(&pending, b"\r\n\r\n") {
                break i + 4;
            }
            let n = client.read(&mut buf)?;
            if n == 0 || done.load(Ordering::SeqCst) {
                let _ = server.shutdown(Shutdown::Both);
                return Ok(());
            }
            pending.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&pending[..head_end]).into_owned();
        let mut first = head.lines().next().unwrap_or("").split(' ');
        let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        if header("transfer-encoding").is_some() {
            // Untracked framing: pass the rest of the connection through as bytes.
            server.write_all(&pending)?;
            std::io::copy(&mut client, &mut server)?;
            return Ok(());
        }
        let len: usize = header("content-length").map_or(0, |v| v.parse().unwrap_or(0));
        let chosen = {
            let mut rules = rules.lock().unwrap();
            rules
                .iter_mut()
                .find(|(m, p, n)| *n > 0 && m == method && path.contains(p.as_str()))
                .map(|r| r.2 -= 1)
                .is_some()
        };
        if chosen {
            *swallow.lock().unwrap() = Some(format!("{method} {path}"));
        }
        // The head, then the body, whole.
        let mut body_left = len;
        let have = pending.len() - head_end;
        let take = have.min(body_left);
        server.write_all(&pending[..head_end + take])?;
        body_left -= take;
        pending.drain(..head_end + take);
        while body_left > 0 {
            let n = client.read(&mut buf[..body_left.min(64 << 10)])?;
            if n == 0 {
                return Ok(());
            }
            server.write_all(&buf[..n])?;
            body_left -= n;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
