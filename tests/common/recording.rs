//! A backend that records exactly the bytes that reach it, and readers that
//! split those bytes into requests under different framings, so that a
//! request smuggled past Meridian is seen even where this backend's own
//! framing would not have been fooled.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The bytes of each recorded connection, in the order they were accepted.
type Recorded = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;

/// A backend on loopback recording every byte of every connection but its
/// health checks, answering each request `200 ok`.
pub struct RecordingBackend {
    pub addr: SocketAddr,
    connections: Recorded,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingBackend {
    pub async fn start() -> RecordingBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections: Recorded = Arc::default();
        let all = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let all = Arc::clone(&all);
                tokio::spawn(async move {
                    let seen = Arc::new(Mutex::new(Vec::new()));
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut pending = Vec::new();
                    let mut recorded = false;
                    loop {
                        let n = match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        pending.extend_from_slice(&buf[..n]);
                        if !recorded && !pending.starts_with(b"GET /healthz") {
                            all.lock().unwrap().push(Arc::clone(&seen));
                            recorded = true;
                        }
                        if recorded {
                            seen.lock().unwrap().extend_from_slice(&buf[..n]);
                        }
                        // Answer every complete request, read strictly.
                        loop {
                            match next_request(&pending, Framing::Strict) {
                                Some(Ok((_, used))) => {
                                    pending.drain(..used);
                                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                                    if stream.write_all(answer).await.is_err() {
                                        return;
                                    }
                                }
                                Some(Err(())) => return,
                                None => break,
                            }
                        }
                    }
                });
            }
        });
        RecordingBackend {
            addr,
            connections,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every byte received so far on connections other than health checks.
    pub fn bytes(&self) -> Vec<Vec<u8>> {
        self.connections
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.lock().unwrap().clone())
            .collect()
    }

    /// Bytes received in total, health checks aside.
    pub fn total(&self) -> usize {
        self.bytes().iter().map(Vec::len).sum()
    }
}

impl Drop for RecordingBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How the length of a body is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// RFC 9112: chunked wins over `Content-Length`; both, or anything
    /// unclear, is an error.
    Strict,
    /// A lenient reader that believes `Content-Length` first.
    LengthFirst,
    /// A lenient reader that believes any `Transfer-Encoding` naming chunked first.
    ChunkedFirst,
}

/// The request lines in `bytes`, read with `framing`; anything unreadable
/// ends the list with `"<unreadable>"`, and bytes left over that make no
/// complete request with `"<incomplete>"`, so that a framing leaving part of
/// a request behind never goes unseen.
pub fn request_lines(mut bytes: &[u8], framing: Framing) -> Vec<String> {
    let mut lines = Vec::new();
    while !bytes.is_empty() {
        match next_request(bytes, framing) {
            Some(Ok((line, used))) => {
                lines.push(line);
                bytes = &bytes[used..];
            }
            Some(Err(())) => {
                lines.push("<unreadable>".into());
                break;
            }
            None => {
                lines.push("<incomplete>".into());
                break;
            }
        }
    }
    lines
}

/// The first request in `bytes`: its request line and the bytes it takes,
/// `None` when incomplete, `Err` when unreadable under `framing`.
fn next_request(bytes: &[u8], framing: Framing) -> Option<Result<(String, usize), ()>> {
    let end = find(bytes, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default().to_owned();
    let (mut length, mut chunked, mut te) = (None, false, false);
    for field in lines {
        let Some((name, value)) = field.split_once(':') else {
            return Some(Err(()));
        };
        let (name, value) = (name.to_ascii_lowercase(), value.trim().to_ascii_lowercase());
        match name.as_str() {
            "content-length" => match value.parse::<usize>() {
                Ok(n) if length.is_none_or(|l| l == n) => length = Some(n),
                _ if framing == Framing::Strict => return Some(Err(())),
                Ok(n) => length = length.or(Some(n)),
                Err(_) => {}
            },
            "transfer-encoding" => {
                te = true;
                chunked |= value.contains("chunked");
            }
            _ => {}
        }
    }
    let body_start = end + 4;
    let use_chunked = match framing {
        Framing::Strict => {
            if te && (length.is_some() || !chunked) {
                return Some(Err(()));
            }
            chunked
        }
        Framing::LengthFirst => length.is_none() && chunked,
        Framing::ChunkedFirst => chunked,
    };
    if use_chunked {
        let used = chunked_len(&bytes[body_start..])?;
        return Some(used.map(|u| (line, body_start + u)));
    }
    let n = length.unwrap_or(0);
    (bytes.len() >= body_start + n).then_some(Ok((line, body_start + n)))
}

/// The length of a chunked body at the start of `bytes`, trailers included.
fn chunked_len(bytes: &[u8]) -> Option<Result<usize, ()>> {
    let mut at = 0;
    loop {
        let line_end = at + find(&bytes[at..], b"\r\n")?;
        let size_text = String::from_utf8_lossy(&bytes[at..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return Some(Err(()));
        };
        at = line_end + 2;
        if size == 0 {
            // Trailers until an empty line.
            loop {
                let end = at + find(&bytes[at..], b"\r\n")?;
                let empty = end == at;
                at = end + 2;
                if empty {
                    return Some(Ok(at));
                }
            }
        }
        if bytes.len() < at + size + 2 {
            return None;
        }
        at += size + 2;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
